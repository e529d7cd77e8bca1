//! The `nexuspipe` command line.

mod cli;

// The pipeline allocates many small strings per event (JSON in, canonical ABI
// lifts out); mimalloc spends about half the time glibc malloc does on them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "nexuspipe",
    version,
    about = "Real-time event engine with WebAssembly plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine: HTTP ingest, the plugin pipeline, outputs in the data dir.
    Run {
        /// Config file (TOML); without it, the embedded default.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// `collector` (HTTP into Kafka), `processor` (Kafka through the
        /// pipeline) or `all`; the first two need `[kafka]` in the config.
        #[arg(long, value_enum, default_value = "all")]
        role: cli::run::Role,
        /// A one-shot job instead of a server: the pipeline over this file of
        /// NDJSON events (`file://PATH`, `.gz` for gzip), every window closed
        /// at its end, then exit.
        #[arg(long, value_name = "file://PATH", conflicts_with = "role")]
        source: Option<String>,
    },
    /// Run the pipeline over events from a file, as fast as it goes (reprocessing, backfill).
    Replay(cli::replay::ReplayArgs),
    /// Generate reproducible website traffic (load tests, demos).
    Gen(cli::loadgen::GenArgs),
    /// Validate configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Work with plugin components offline.
    #[command(subcommand)]
    Plugin(cli::plugin::PluginCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a config file and the plugins it names, without starting.
    Check { file: std::path::PathBuf },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NEXUSPIPE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        quiet_on_closed_pipe();
    }
    let result = match cli.command {
        Command::Run {
            config,
            source: Some(source),
            ..
        } => cli::run::load_config(config.as_deref())
            .and_then(|c| cli::replay::run_source(c, &source)),
        Command::Run { config, role, .. } => cli::run::run(config.as_deref(), role),
        Command::Config(ConfigCommand::Check { file }) => cli::run::check(&file),
        Command::Replay(args) => cli::replay::run(args),
        Command::Gen(args) => cli::loadgen::run(args),
        Command::Plugin(cmd) => cli::plugin::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Output piped into `head` ends a command as it ends `cat`: quietly, by
/// SIGPIPE (Rust ignores the signal, so `println!` would panic on the closed
/// pipe). Not for `run`: a server's write to a closed socket stays an error.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: called before any thread starts; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
