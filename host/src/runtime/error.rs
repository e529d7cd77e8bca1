//! Typed errors of the plugin runtime.

use std::path::PathBuf;

/// What went wrong loading or running a plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a WebAssembly file (it does not start with the `\\0asm` magic bytes)")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component; build for `wasm32-wasip2` or run `wasm-tools component new` on it"
    )]
    CoreModule,
    #[error("invalid component: {0}")]
    Compile(String),
    #[error(
        "the component implements no NexusPipe world: it must export one of {accepted}; it exports [{found}]",
        accepted = super::World::ALL.map(|w| format!("`{}` ({w})", w.export_name())).join(", "),
        found = exports.join(", ")
    )]
    UnknownWorld { exports: Vec<String> },
    #[error("the component needs imports the host does not provide: {0}")]
    Link(String),
    #[error("the engine could not be set up: {0}")]
    Engine(String),
    #[error("config rejected by the plugin: {0}")]
    Config(String),
    #[error("the plugin rejected the state it was given: {0}")]
    State(String),
    #[error("{0}")]
    Failed(#[from] super::supervisor::Failure),
}

/// Renders a wasmtime error with its whole cause chain on one line.
pub(crate) fn chain(e: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        // The wasm backtrace of a stripped plugin is a list of `<unknown>`
        // frames: noise in a log line or a dead letter.
        if s.starts_with("error while executing at wasm backtrace") {
            continue;
        }
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

impl PluginError {
    pub(crate) fn engine(e: wasmtime::Error) -> Self {
        PluginError::Engine(chain(&e))
    }
    pub(crate) fn compile(e: wasmtime::Error) -> Self {
        PluginError::Compile(chain(&e))
    }
    pub(crate) fn link(e: wasmtime::Error) -> Self {
        PluginError::Link(chain(&e))
    }
}
