//! The sandboxed plugin runtime: one wasmtime [`Engine`] per process, components
//! compiled once and cached on disk by content hash, instances created from an
//! [`InstancePre`] with per-plugin limits, and a supervisor that isolates failures.

pub use crate::bindings;
mod cache;
mod error;
mod instance;
pub(crate) mod replay;
pub(crate) mod supervisor;

pub use crate::config::limits::{Capabilities, DirGrant, Limits};
pub use bindings::types::{
    Alert, AlertStatus, Change, ConfigError, Event, EventFields, EventPatch, HostSettings,
    Interest, Level, Metadata, MetadataFields, MetricPoint, Property, Restored, Severity, Value,
};
pub use cache::CacheStats;
pub use error::PluginError;
pub use instance::PluginState;
pub use supervisor::{
    BreakerState, Catchup, DeadLetter, Failure, FailureKind, Plugin, PluginOutput, PluginStats,
    Remembered, refresh_downstream, same_interest,
};

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Engine};

/// How often the epoch ticks. A per-call deadline is rounded up to whole ticks,
/// so a runaway call is stopped at most one tick after its deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The plugin worlds the host accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    Enricher,
    Aggregator,
    Alerter,
}

impl World {
    pub const ALL: [World; 3] = [World::Enricher, World::Aggregator, World::Alerter];

    /// The interface a component of this world exports.
    pub fn export_name(self) -> &'static str {
        match self {
            World::Enricher => "nexuspipe:plugin/enrich@0.4.0",
            World::Aggregator => "nexuspipe:plugin/aggregate@0.4.0",
            World::Alerter => "nexuspipe:plugin/alerting@0.4.0",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            World::Enricher => "enricher",
            World::Aggregator => "aggregator",
            World::Alerter => "alerter",
        }
    }

    /// Whether the plugin keeps state the host checkpoints.
    pub fn is_stateful(self) -> bool {
        self != World::Enricher
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A compiled, linked component, ready to instantiate.
#[derive(Clone)]
pub struct PluginComponent {
    pub world: World,
    /// Hex SHA-256 of the component bytes: the plugin's version.
    pub hash: String,
    /// Every export of the component, for diagnostics.
    pub exports: Vec<String>,
    pub(crate) pre: InstancePre<PluginState>,
    /// Deadlines need the epoch to keep ticking as long as any plugin lives.
    _ticker: Arc<EpochTicker>,
}

impl PluginComponent {
    /// A short form of the version hash for logs.
    pub fn short_hash(&self) -> &str {
        &self.hash[..12]
    }
}

/// The process-wide plugin runtime.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<PluginState>>,
    cache: Option<cache::ComponentCache>,
    _ticker: Arc<EpochTicker>,
}

impl Runtime {
    /// Creates the engine; compiled components are cached under `cache_dir`.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, PluginError> {
        let mut config = Config::new();
        // Deadlines: a cheap check at loop headers and function entries.
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        // `perf` names plugin functions from /tmp/perf-<pid>.map (see
        // docs/writing-plugins.md, "Profiling a plugin").
        if std::env::var_os("NEXUSPIPE_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(PluginError::engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(PluginError::engine)?;
        bindings::host::add_to_linker::<PluginState, wasmtime::component::HasSelf<PluginState>>(
            &mut linker,
            |s| s,
        )
        .map_err(PluginError::engine)?;
        let cache = cache_dir.map(|dir| cache::ComponentCache::new(dir, &engine));
        let ticker = EpochTicker::start(engine.clone());
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            cache,
            _ticker: Arc::new(ticker),
        })
    }

    /// The default cache directory: `$NEXUSPIPE_CACHE_DIR`, else the user's
    /// cache dir (`$XDG_CACHE_HOME` or `~/.cache`) + `/nexuspipe`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("NEXUSPIPE_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("nexuspipe"))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// What the compile cache did (`None` without a cache).
    pub fn cache_stats(&self) -> Option<Arc<CacheStats>> {
        self.cache.as_ref().map(|c| c.stats.clone())
    }

    /// Reads and loads a component file.
    pub fn load_file(&self, path: &Path) -> Result<PluginComponent, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.load(&bytes)
    }

    /// Compiles (or fetches from the cache), checks the world and links a component.
    pub fn load(&self, bytes: &[u8]) -> Result<PluginComponent, PluginError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(PluginError::NotWasm);
        }
        // Layer 0x0d/0x01 marks a component; a core module is version 1, layer 0.
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err(PluginError::CoreModule);
        }
        let hash = content_hash(bytes);
        let component = match &self.cache {
            Some(cache) => cache.get_or_compile(&self.engine, &hash, bytes)?,
            None => Component::new(&self.engine, bytes).map_err(PluginError::compile)?,
        };
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let world = World::ALL
            .into_iter()
            .find(|w| exports.iter().any(|e| e == w.export_name()))
            .ok_or_else(|| PluginError::UnknownWorld {
                exports: exports.clone(),
            })?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(PluginError::link)?;
        Ok(PluginComponent {
            world,
            hash,
            exports,
            pre,
            _ticker: self._ticker.clone(),
        })
    }
}

/// A component's version: hex SHA-256 of its bytes.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Increments the engine's epoch on a background thread; stopped on drop.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("nexuspipe-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
