//! `nexuspipe run` and `nexuspipe config check`.

use anyhow::{Context, Result, bail};
use nexuspipe::api::{self, ApiState, Ingest};
use nexuspipe::config::{ArchiveStage, Config, Durability, FsyncMode, PluginConfig};
use nexuspipe::engine::wal::Fsync;
use nexuspipe::engine::{Engine, EngineSettings};
use nexuspipe::kafka::Collector;
use nexuspipe::kafka::processor::{self, Keyed, ProcessorSettings, Step};
use nexuspipe::live::{Manager, folder};
use nexuspipe::runtime::{Capabilities, HostSettings, Limits, Plugin, Runtime};
use nexuspipe::sinks::Outputs;
use nexuspipe::sinks::archive::{ArchiveSettings, RemoteSettings};
use nexuspipe::telemetry::Metrics;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The bundled plugins of the default pipeline, in order.
pub const DEFAULT_PIPELINE: [&str; 3] = ["enrich-geo", "funnel", "alerts"];

/// Where the bundled plugins are: `$NEXUSPIPE_PLUGIN_DIR`, else `target/plugins`
/// beside the binary's build dir, else `./target/plugins`.
fn bundled_plugin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NEXUSPIPE_PLUGIN_DIR") {
        return dir.into();
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe
            .parent()
            .and_then(Path::parent)
            .map(|t| t.join("plugins"))
        && dir.join("funnel.wasm").exists()
    {
        return dir;
    }
    PathBuf::from("target/plugins")
}

/// The configured pipeline, or the default one.
pub fn pipeline(config: &Config) -> Vec<PluginConfig> {
    if !config.plugins.is_empty() {
        return config.plugins.clone();
    }
    let dir = bundled_plugin_dir();
    DEFAULT_PIPELINE
        .iter()
        .map(|name| PluginConfig {
            name: name.to_string(),
            path: dir.join(format!("{name}.wasm")),
            config: None,
            config_file: None,
            limits: Limits::default(),
            capabilities: Capabilities::default(),
            partition_by: None,
        })
        .collect()
}

/// Loads and initialises the pipeline the server runs: the configured (or
/// default) plugins, with the versions deployed since recorded in the data
/// dir. Errors name the plugin and file.
pub(super) fn start_pipeline(
    config: &Config,
    metrics: Arc<Metrics>,
) -> Result<(Arc<Manager>, Vec<Plugin>)> {
    let runtime = Runtime::new(Runtime::default_cache_dir())?;
    Manager::start(
        runtime,
        host_settings(config),
        metrics,
        &config.engine.data_dir,
        pipeline(config),
    )
    .with_context(|| {
        if config.plugins.is_empty() {
            "the default pipeline needs the bundled plugins: run `make plugins`"
        } else {
            "loading the pipeline"
        }
    })
}

fn host_settings(config: &Config) -> HostSettings {
    HostSettings {
        allowed_lateness: config.engine.allowed_lateness.as_millis() as i64,
        // The engine tells each enricher what its pipeline reads.
        downstream_properties: None,
    }
}

pub fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

/// `nexuspipe config check <file>`: validates the config and loads the
/// plugins the server would run with it.
pub fn check(path: &Path) -> Result<()> {
    let config = load_config(Some(path))?;
    let (_, plugins) = start_pipeline(&config, Arc::new(Metrics::new()))?;
    let schemas = nexuspipe::schema::Schemas::none();
    for t in &config.schemas.types {
        let schema = nexuspipe::schema::read_file(t)?;
        schemas.put(&t.event_type, Some(schema), "config", None)?;
    }
    println!("{}: ok", path.display());
    for p in &plugins {
        println!(
            "  plugin {} ({}, version {})",
            p.name(),
            p.world(),
            p.component().short_hash()
        );
    }
    Ok(())
}

/// What a host does (`nexuspipe run --role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Everything: without `[kafka]` the embedded engine; with it, a collector and a processor.
    All,
    /// HTTP ingest into Kafka (needs `[kafka]`).
    Collector,
    /// Consumes Kafka in the consumer group and runs the pipeline (needs `[kafka]`).
    Processor,
}

/// `nexuspipe run`: serves until SIGINT/SIGTERM, then drains, checkpoints and exits.
pub fn run(config_path: Option<&Path>, role: Role) -> Result<()> {
    let config = load_config(config_path)?;
    match (&config.kafka, role) {
        (None, Role::All) => run_embedded(config),
        (None, r) => bail!(
            "--role {} needs a `[kafka]` table in the config (brokers, topic, group)",
            if r == Role::Collector {
                "collector"
            } else {
                "processor"
            }
        ),
        (Some(_), r) => run_kafka(config, r),
    }
}

/// `[archive]`, for the engine or a processor.
fn archive_settings(config: &Config) -> Option<ArchiveSettings> {
    let e = &config.engine;
    config.archive.as_ref().map(|a| ArchiveSettings {
        dir: match &a.url {
            Some(_) => e.data_dir.join("archive-staging"),
            None => e.data_dir.join(&a.path),
        },
        remote: a.url.as_ref().map(|url| RemoteSettings {
            url: url.clone(),
            options: a.options.clone().into_iter().collect(),
        }),
        raw: a.stage == ArchiveStage::Raw,
        max_file_size: a.max_file_size as u64,
        flush_interval: a.flush_interval,
        keep: a.keep,
    })
}

pub(super) fn engine_settings(config: &Config) -> EngineSettings {
    let e = &config.engine;
    EngineSettings {
        archive: archive_settings(config),
        out_of_orderness: e.out_of_orderness,
        idle_timeout: e.idle_timeout,
        checkpoint_interval: e.checkpoint_interval,
        queue_capacity: e.queue_capacity,
        batch_size: e.batch_size,
        data_dir: e.data_dir.clone(),
        dedupe_max_ids: e.dedupe_max_ids,
        allowed_lateness: e.allowed_lateness,
        wal: match (e.durability, e.fsync) {
            (Durability::Memory, _) => None,
            (Durability::Wal, FsyncMode::Always) => Some(Fsync::Always),
            (Durability::Wal, FsyncMode::Interval) => Some(Fsync::Interval(e.fsync_interval)),
        },
    }
}

pub(super) fn describe(plugins: &[Plugin]) -> String {
    plugins
        .iter()
        .map(|p| {
            format!(
                "{} ({}, {})",
                p.name(),
                p.world(),
                p.component().short_hash()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The embedded default: HTTP ingest into the engine thread, on one host.
fn run_embedded(config: Config) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let e = &config.engine;
    let (manager, plugins) = start_pipeline(&config, metrics.clone())?;
    manager
        .configure_schemas(&config.schemas)
        .context("[schemas]")?;
    let outputs = Outputs::open(&config, metrics.clone())?;
    manager.schemas().share_dead_letters(outputs.dead_letters());
    let store = outputs.store();
    let hub = outputs.hub();
    let stopper = outputs.stopper();
    let engine = Engine::new(engine_settings(&config), plugins, metrics.clone(), outputs)
        .with_context(|| format!("starting the engine in {}", e.data_dir.display()))?;
    let plugin_list = describe(engine.plugins());
    let (handle, engine_thread) = engine.spawn().context("starting the engine")?;
    manager.attach(handle.clone());
    if let Some(folder) = &config.plugin_folder {
        folder::watch(manager.clone(), folder.clone())?;
    }
    let admin_token = config.http.admin_token();
    if admin_token.is_none() {
        tracing::info!("admin API disabled (set http.admin_token or NEXUSPIPE_ADMIN_TOKEN)");
    }
    let state = ApiState {
        ingest: Ingest::Engine(handle.clone()),
        metrics,
        max_body: config.http.max_body,
        max_future_ms: config.engine.max_future.as_millis() as i64,
        ready: Arc::new(AtomicBool::new(false)),
        manager,
        admin_token,
        max_plugin_size: config.http.max_plugin_size,
        store,
        read_token: config.http.read_token(),
        hub,
    };
    let served = serve(&config, state, &plugin_list, "embedded");
    // Whatever happened to the server, accepted events are processed and state is checkpointed.
    stopper.stop();
    handle.shutdown();
    drop(handle);
    if engine_thread.join().is_err() {
        bail!("the engine thread panicked");
    }
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// With Kafka: a collector (HTTP into the topic), a processor (the topic
/// through the pipeline), or both.
fn run_kafka(config: Config, role: Role) -> Result<()> {
    let k = config.kafka.clone().expect("checked by the caller");
    let metrics = Arc::new(Metrics::new());
    let e = &config.engine;
    let collects = role != Role::Processor;
    let processes = role != Role::Collector;
    let pipeline_config = pipeline(&config);
    // Every host reads the deployed pipeline from the plugins topic; a
    // collector validates uploads against it too.
    let runtime = Runtime::new(Runtime::default_cache_dir())?;
    let (manager, plugins, reader) = Manager::start_kafka(
        runtime,
        host_settings(&config),
        metrics.clone(),
        &e.data_dir,
        pipeline_config.clone(),
        &k,
    )
    .context("loading the pipeline")?;
    // After the plugins topic was read: a config file's schema that is the
    // group's current one already adds no version.
    manager
        .configure_schemas(&config.schemas)
        .context("[schemas]")?;
    let plugin_list = describe(&plugins);
    // A processor answers queries for the points of its own tasks.
    let mut store = None;
    let mut hub = None;
    let processor = if processes {
        // In config order: a keyed stage sees what the enrichers before it did.
        let steps = plugins
            .into_iter()
            .map(|p| {
                if !p.world().is_stateful() {
                    return Step::Enrich(p);
                }
                let partition_by = pipeline_config
                    .iter()
                    .find(|c| c.name == p.name())
                    .and_then(|c| c.partition_by.clone());
                Step::Keyed(Keyed {
                    template: p,
                    partition_by,
                })
            })
            .collect();
        let settings = ProcessorSettings {
            out_of_orderness: e.out_of_orderness,
            idle_timeout: e.idle_timeout,
            checkpoint_interval: e.checkpoint_interval,
            batch_size: e.batch_size,
            max_future: e.max_future,
            dedupe_max_ids: e.dedupe_max_ids,
            // As on one host.
            dedupe_horizon_ms: (e.out_of_orderness + e.allowed_lateness).as_millis() as i64
                + nexuspipe::dataflow::dedupe::EXTRA_HORIZON_MS,
            archive: archive_settings(&config),
        };
        let outputs = Outputs::open(&config, metrics.clone())?;
        manager.schemas().share_dead_letters(outputs.dead_letters());
        store = outputs.store();
        hub = outputs.hub();
        let (tx, rx) = std::sync::mpsc::channel();
        let live = processor::Live {
            changes: rx,
            clock: manager.group_clock().expect("joined the cluster"),
        };
        let p = processor::start(&k, settings, steps, outputs, metrics.clone(), Some(live))
            .with_context(|| format!("starting the processor (kafka at {})", k.brokers))?;
        manager.follow_cluster(reader, Some(tx))?;
        Some(p)
    } else {
        manager.follow_cluster(reader, None)?;
        None
    };
    let ingest = if collects {
        nexuspipe::kafka::ensure_topics(&k, &[(k.topic.clone(), k.partitions, false)])
            .with_context(|| format!("kafka at {}", k.brokers))?;
        Ingest::Kafka(Arc::new(Collector::new(&k)?))
    } else {
        Ingest::Disabled
    };
    let admin_token = config.http.admin_token();
    if admin_token.is_none() {
        tracing::info!("admin API disabled (set http.admin_token or NEXUSPIPE_ADMIN_TOKEN)");
    }
    let state = ApiState {
        ingest: ingest.clone(),
        metrics,
        max_body: config.http.max_body,
        max_future_ms: config.engine.max_future.as_millis() as i64,
        ready: Arc::new(AtomicBool::new(false)),
        manager: manager.clone(),
        admin_token,
        max_plugin_size: config.http.max_plugin_size,
        store,
        read_token: config.http.read_token(),
        hub,
    };
    let role_name = match role {
        Role::All => "collector and processor",
        Role::Collector => "collector",
        Role::Processor => "processor",
    };
    let served = serve(&config, state, &plugin_list, role_name);
    if let Ingest::Kafka(c) = &ingest {
        c.flush();
    }
    if let Some(p) = processor {
        p.stop().context("stopping the processor")?;
    }
    manager.leave_cluster();
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// Serves the HTTP API until SIGINT/SIGTERM.
fn serve(config: &Config, state: ApiState, plugin_list: &str, role: &str) -> Result<()> {
    let listen: SocketAddr = config.http.listen.parse().context("http.listen")?;
    let tls = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => {
            Some(api::server::tls_acceptor(cert, key).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nexuspipe-http")
        .build()?;
    let ready = state.ready.clone();
    let metrics = state.metrics.clone();
    tokio.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => bail!("cannot listen on {listen} (http.listen): {e}"),
        };
        let local = listener.local_addr()?;
        tracing::info!(
            listen = %local,
            tls = tls.is_some(),
            role,
            data_dir = %config.engine.data_dir.display(),
            plugins = %plugin_list,
            metrics = %config.influxdb.as_ref().map_or_else(|| "metrics.lp".to_string(), |i| format!("InfluxDB {:?} at {}", i.api, i.url)),
            webhooks = config.webhooks.len(),
            kafka = %config.kafka.as_ref().map_or_else(|| "off".to_string(), |k| format!("{} topic {} group {}", k.brokers, k.topic, k.group)),
            "nexuspipe running"
        );
        ready.store(true, Ordering::Relaxed);
        let app = api::router(state, &config.http.cors_origins);
        let limits = api::server::Limits {
            read_timeout: config.http.read_timeout,
            idle_timeout: config.http.idle_timeout,
            max_connections: config.http.max_connections,
        };
        api::server::serve(
            listener,
            app,
            limits,
            tls,
            shutdown_signal(ready.clone(), metrics),
        )
        .await;
        Ok(())
    })
}

/// How long a process that cannot go on keeps answering `/readyz` (503,
/// with the cause) before it exits, so a probe or a person sees why.
const FATAL_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

async fn shutdown_signal(ready: Arc<AtomicBool>, metrics: Arc<Metrics>) {
    let ctrl_c = tokio::signal::ctrl_c();
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    let fatal = async {
        loop {
            if let Some(cause) = metrics.fatal() {
                tracing::error!(cause = %cause, grace_s = FATAL_GRACE.as_secs(), "cannot go on; /readyz says why until the process exits");
                tokio::time::sleep(FATAL_GRACE).await;
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
        _ = fatal => {},
    }
    ready.store(false, Ordering::Relaxed);
    tracing::info!("shutting down: no new requests; draining the queue");
}
