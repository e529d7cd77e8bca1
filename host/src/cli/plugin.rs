//! `nexuspipe plugin check|run|deploy`: the plugin author's tools (and
//! `new|build|test` in [`super::kit`]).

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use nexuspipe::engine::offline;
use nexuspipe::event::{EventDefaults, from_json, now_ms, to_json};
use nexuspipe::runtime::{Capabilities, DirGrant, HostSettings, Limits, Plugin, Runtime, World};
use nexuspipe::sinks::{self, files::AppendFile};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Print a component's world, declared interest and exports, or why it is refused.
    Check {
        /// The component (`.wasm`).
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run one plugin over events from an NDJSON file and print its outputs as NDJSON.
    Run(RunArgs),
    /// Upload a new version to a running server (`PUT /v1/plugins/{name}`);
    /// it swaps in between two batches, keeping the plugin's state.
    Deploy(DeployArgs),
    /// Create a plugin project that builds as it is: the world's code, the
    /// WIT, a sample input with its expected output, a README.
    New {
        /// The plugin's name (letters, digits, `-`, `_`).
        name: String,
        #[arg(long, value_enum)]
        lang: super::kit::Lang,
        #[arg(long, value_enum)]
        world: super::kit::WorldArg,
        /// Where to create it (default: `./<name>`).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build a project into `build/<name>.wasm` with its language's toolchain.
    Build {
        /// The project (default: here).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run each `tests/<case>.input.ndjson` through the built component and
    /// compare the outputs with `<case>.expected.ndjson`.
    Test {
        /// The project (default: here).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Write the outputs as the expected files instead of comparing.
        #[arg(long)]
        bless: bool,
    },
}

#[derive(Args)]
pub struct DeployArgs {
    /// The component (`.wasm`), or a plugin project (its `build/<name>.wasm`).
    #[arg(default_value = ".")]
    file: PathBuf,
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    server: String,
    /// The admin token.
    #[arg(long, env = "NEXUSPIPE_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Plugin name (default: the file name without `.wasm`).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    config: ConfigArg,
    /// Start the new version empty instead of handing it the running state.
    #[arg(long)]
    reset_state: bool,
}

#[derive(Args)]
pub struct RunArgs {
    /// The component (`.wasm`).
    file: PathBuf,
    /// Events, one canonical JSON event per line (`-` for stdin).
    #[arg(long)]
    input: PathBuf,
    #[command(flatten)]
    config: ConfigArg,
    /// Events per call into the plugin.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// Watermark bound: how far behind the newest event time the watermark trails (ms).
    #[arg(long, default_value_t = 5_000)]
    out_of_orderness: i64,
    /// How long a closed window still accepts late events (ms).
    #[arg(long, default_value_t = 0)]
    allowed_lateness: i64,
    /// Where dead letters and late events are written.
    #[arg(long, default_value = "nexuspipe-data")]
    data_dir: PathBuf,
    /// Per-call deadline (ms).
    #[arg(long, default_value_t = Limits::default().deadline_ms)]
    deadline_ms: u64,
    /// Memory cap (MiB).
    #[arg(long, default_value_t = Limits::default().memory_mib)]
    memory_mib: u64,
    /// Grant a host directory read-only, as HOST:GUEST (e.g. `./geo:/geo`).
    #[arg(long = "dir", value_name = "HOST:GUEST")]
    dirs: Vec<String>,
}

/// A plugin's config, from a file or inline. Without either, `check` and
/// `run` use the plugin's default config and `deploy` keeps the running
/// version's.
#[derive(Args)]
#[group(multiple = false)]
pub struct ConfigArg {
    /// Plugin config from a file (default: `check` and `run` use the
    /// plugin's default config, `deploy` keeps the running version's).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Plugin config as text, as `config` in `[[plugins]]` and `?config=` take it.
    #[arg(long, value_name = "TEXT")]
    config_text: Option<String>,
}

impl ConfigArg {
    fn text(&self) -> Result<Option<String>> {
        match (&self.config, &self.config_text) {
            (Some(p), _) => std::fs::read_to_string(p)
                .map(Some)
                .with_context(|| format!("reading plugin config {}", p.display())),
            (None, text) => Ok(text.clone()),
        }
    }
}

pub fn run(cmd: PluginCommand) -> Result<()> {
    match cmd {
        PluginCommand::Check { file, config } => check(&file, &config),
        PluginCommand::Run(args) => run_file(args),
        PluginCommand::Deploy(args) => deploy(args),
        PluginCommand::New {
            name,
            lang,
            world,
            dir,
        } => super::kit::new(&name, lang, world, dir.as_deref()),
        PluginCommand::Build { dir } => super::kit::build(&dir).map(|_| ()),
        PluginCommand::Test { dir, bless } => super::kit::test(&dir, bless),
    }
}

fn deploy(mut args: DeployArgs) -> Result<()> {
    if args.file.is_dir() {
        let m = super::kit::Manifest::read(&args.file)?;
        let built = m.component(&args.file);
        if !built.is_file() {
            bail!(
                "{} is not built yet: run `nexuspipe plugin build` first",
                built.display()
            );
        }
        args.name.get_or_insert(m.name);
        args.file = built;
    }
    let component =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let name = match args.name {
        Some(n) => n,
        None => args
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .with_context(|| format!("{}: give the plugin a --name", args.file.display()))?,
    };
    // A multipart body: the component, and the config if given.
    let boundary = format!("nexuspipe-{:016x}", fastrand::u64(..));
    let mut body = Vec::with_capacity(component.len() + 1024);
    let mut part = |name: &str, content_type: &str, data: &[u8]| {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    };
    part("component", "application/wasm", &component);
    if let Some(text) = args.config.text()? {
        part("config", "text/plain; charset=utf-8", text.as_bytes());
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let url = format!(
        "{}/v1/plugins/{name}?reset_state={}",
        args.server.trim_end_matches('/'),
        args.reset_state
    );
    let response = ureq::put(&url)
        .set("Authorization", &format!("Bearer {}", args.token))
        .set(
            "Content-Type",
            &format!("multipart/form-data; boundary={boundary}"),
        )
        .send_bytes(&body);
    match response {
        Ok(r) => {
            let text = r.into_string().context("reading the server's answer")?;
            let report: serde_json::Value =
                serde_json::from_str(&text).context("the server's answer is not JSON")?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(text);
            bail!("{url}: {code}: {message}")
        }
        Err(e) => bail!("{url}: {e}"),
    }
}

fn check(file: &Path, config: &ConfigArg) -> Result<()> {
    let runtime = Runtime::new(Runtime::default_cache_dir())?;
    let component = runtime
        .load_file(file)
        .with_context(|| format!("{} is not a usable plugin", file.display()))?;
    let config = config.text()?.unwrap_or_default();
    let plugin = Plugin::new(
        &file.display().to_string(),
        component.clone(),
        &config,
        HostSettings {
            allowed_lateness: 0,
            downstream_properties: None,
        },
        Limits::default(),
        Capabilities::default(),
    )
    .with_context(|| format!("{} failed to initialise", file.display()))?;
    let interest = plugin.interest();
    let report = serde_json::json!({
        "file": file.display().to_string(),
        "world": component.world,
        "version": component.hash,
        "interest": {
            "event_types": if interest.event_types.is_empty() { serde_json::json!("all") } else { serde_json::json!(interest.event_types) },
            "properties": interest.properties.as_ref().map_or(serde_json::json!("all"), |p| serde_json::json!(p)),
            "metadata": metadata_names(interest.metadata),
            "fields": field_names(interest.fields),
        },
        "exports": component.exports,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn metadata_names(m: nexuspipe::runtime::MetadataFields) -> Vec<&'static str> {
    use nexuspipe::runtime::MetadataFields as F;
    let names = [
        (F::IP_ADDRESS, "ip_address"),
        (F::USER_AGENT, "user_agent"),
        (F::PLATFORM, "platform"),
        (F::URL, "url"),
        (F::REFERRER, "referrer"),
    ];
    named(names, |f| m.contains(f))
}

fn field_names(f: nexuspipe::runtime::EventFields) -> Vec<&'static str> {
    use nexuspipe::runtime::EventFields as F;
    let names = [
        (F::ID, "event_id"),
        (F::USER_ID, "user_id"),
        (F::SESSION_ID, "session_id"),
    ];
    named(names, |flag| f.contains(flag))
}

/// The names of the flags that are set.
fn named<F, const N: usize>(
    names: [(F, &'static str); N],
    set: impl Fn(F) -> bool,
) -> Vec<&'static str> {
    names
        .into_iter()
        .filter_map(|(f, n)| set(f).then_some(n))
        .collect()
}

/// Reads canonical events from NDJSON; a bad line is an error naming the line and field.
pub fn read_events(path: &Path) -> Result<Vec<nexuspipe::runtime::Event>> {
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        ))
    };
    let defaults = EventDefaults {
        now_ms: now_ms(),
        ..Default::default()
    };
    let mut events = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let json: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: malformed JSON", path.display(), n + 1))?;
        let event = from_json(json, &defaults)
            .with_context(|| format!("{}:{}: invalid event", path.display(), n + 1))?;
        events.push(event);
    }
    Ok(events)
}

/// How `plugin run` and `plugin test` drive a plugin: as the host would,
/// offline.
pub struct RunOptions {
    pub batch: usize,
    pub out_of_orderness: i64,
    pub allowed_lateness: i64,
    pub limits: Limits,
    pub caps: Capabilities,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            batch: 1024,
            out_of_orderness: 5_000,
            allowed_lateness: 0,
            limits: Limits::default(),
            caps: Capabilities::default(),
        }
    }
}

/// Runs `events` through a new instance of `component`; its outputs
/// (events, points or alerts, by world) as `plugin run` prints them, and
/// what went to the dead-letter and late outputs.
pub fn run_plugin(
    name: &str,
    component: nexuspipe::runtime::PluginComponent,
    config: &str,
    events: Vec<nexuspipe::runtime::Event>,
    opts: &RunOptions,
) -> Result<(Vec<serde_json::Value>, offline::OfflineRun)> {
    let world = component.world;
    let mut plugin = Plugin::new(
        name,
        component,
        config,
        // Run alone, its output is the events themselves: everything is read.
        HostSettings {
            allowed_lateness: opts.allowed_lateness,
            downstream_properties: None,
        },
        opts.limits.clone(),
        opts.caps.clone(),
    )
    .with_context(|| format!("plugin {name} failed to initialise"))?;
    let n = events.len();
    let result = offline::run(&mut plugin, events, opts.batch, opts.out_of_orderness);
    let lines = match world {
        World::Enricher => result.events.iter().map(to_json).collect(),
        World::Aggregator => result.points.iter().map(sinks::point_to_json).collect(),
        World::Alerter => result.alerts.iter().map(sinks::alert_to_json).collect(),
    };
    let stats = plugin.stats();
    tracing::debug!(plugin = %name, %world, events = n, calls = stats.calls, failures = stats.failures, breaker = ?plugin.breaker(), "done");
    Ok((lines, result))
}

fn run_file(args: RunArgs) -> Result<()> {
    let runtime = Runtime::new(Runtime::default_cache_dir())?;
    let component = runtime
        .load_file(&args.file)
        .with_context(|| format!("{} is not a usable plugin", args.file.display()))?;
    let config = args.config.text()?.unwrap_or_default();
    let mut caps = Capabilities::default();
    for d in &args.dirs {
        let Some((host, guest)) = d.split_once(':') else {
            bail!("--dir {d}: expected HOST:GUEST");
        };
        caps.dirs.push(DirGrant {
            host: host.into(),
            guest: guest.into(),
            writable: false,
        });
    }
    let opts = RunOptions {
        batch: args.batch,
        out_of_orderness: args.out_of_orderness,
        allowed_lateness: args.allowed_lateness,
        limits: Limits {
            deadline_ms: args.deadline_ms,
            memory_mib: args.memory_mib,
            ..Limits::default()
        },
        caps,
    };
    let name = args.file.file_stem().map_or_else(
        || "plugin".to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    let events = read_events(&args.input)?;
    let (lines, result) = run_plugin(&name, component, &config, events, &opts)
        .with_context(|| format!("{}", args.file.display()))?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for line in &lines {
        serde_json::to_writer(&mut out, line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;

    let output = &result.output;
    if !output.dead.is_empty() {
        let mut f = AppendFile::new(args.data_dir.join("dead-letter.jsonl"));
        for d in &output.dead {
            f.write_json(&sinks::dead_letter_to_json(d));
        }
        f.flush(true)?;
        let lost: usize = output.dead.iter().map(|d| d.events.len()).sum();
        eprintln!(
            "warning: {lost} event(s) in {} failed batch(es) written to {}",
            output.dead.len(),
            f.path().display()
        );
    }
    if !output.late.is_empty() {
        let mut f = AppendFile::new(args.data_dir.join("late.jsonl"));
        for (p, e) in &output.late {
            f.write_json(&sinks::late_to_json(p, e));
        }
        f.flush(true)?;
        eprintln!(
            "warning: {} late event(s) written to {}",
            output.late.len(),
            f.path().display()
        );
    }
    Ok(())
}
