//! The watched plugins folder. `<name>.wasm`, with an optional `<name>.toml`
//! (the keys of a `[[plugins]]` table but `name` and `path`), is deployed once
//! both files have settled: no change for the debounce time and the same size
//! and modification time as at the last change, so a file still being copied
//! is never loaded. A deleted `<name>.wasm` that came from the folder is unloaded.

use super::{DeployRequest, Manager, Source};
use crate::config::{FolderConfig, PluginConfig, validate_plugin_name};
use anyhow::Context;
use notify::{RecursiveMode, Watcher};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Instant, SystemTime};

/// Size and modification time of a plugin's two files.
type Fingerprint = [Option<(u64, SystemTime)>; 2];

struct Pending {
    since: Instant,
    fingerprint: Fingerprint,
}

/// Starts watching; files already in the folder are deployed once settled.
pub fn watch(manager: Arc<Manager>, config: FolderConfig) -> anyhow::Result<()> {
    let dir = config.dir.clone();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the plugins folder {}", dir.display()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx).context("starting the folder watcher")?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    let mut pending: HashMap<String, Pending> = HashMap::new();
    for entry in std::fs::read_dir(&dir)?.flatten() {
        if let Some(name) = plugin_name(&entry.path()) {
            changed(&mut pending, &dir, name);
        }
    }
    tracing::info!(dir = %dir.display(), debounce = ?config.debounce, "watching the plugins folder");
    let tick = (config.debounce / 5).max(std::time::Duration::from_millis(10));
    std::thread::Builder::new()
        .name("nexuspipe-folder".into())
        .spawn(move || {
            let _watcher = watcher;
            loop {
                match rx.recv_timeout(tick) {
                    Ok(Ok(event)) => {
                        for path in &event.paths {
                            if let Some(name) = plugin_name(path) {
                                changed(&mut pending, &dir, name);
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "folder watch error")
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                let settled: Vec<String> = pending
                    .iter()
                    .filter(|(_, p)| p.since.elapsed() >= config.debounce)
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in settled {
                    let p = pending.remove(&name).expect("listed above");
                    let now = fingerprint(&dir, &name);
                    if now != p.fingerprint {
                        // Changed without an event we saw (or between two): wait again.
                        pending.insert(
                            name,
                            Pending {
                                since: Instant::now(),
                                fingerprint: now,
                            },
                        );
                        continue;
                    }
                    apply(&manager, &dir, &name, p.since);
                }
                if pending.is_empty() {
                    manager
                        .metrics()
                        .folder_idle_checks
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
        .context("spawning the folder thread")?;
    Ok(())
}

/// The plugin a folder entry belongs to: `x.wasm` and `x.toml` are plugin `x`;
/// hidden and temporary files (`.x.wasm`, `x.wasm.part`) are not.
fn plugin_name(path: &Path) -> Option<String> {
    let ext = path.extension()?.to_str()?;
    if ext != "wasm" && ext != "toml" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    (!stem.starts_with('.')).then(|| stem.to_string())
}

/// Notes that `name`'s files changed: its debounce starts again.
fn changed(pending: &mut HashMap<String, Pending>, dir: &Path, name: String) {
    let fingerprint = fingerprint(dir, &name);
    pending.insert(
        name,
        Pending {
            since: Instant::now(),
            fingerprint,
        },
    );
}

fn fingerprint(dir: &Path, name: &str) -> Fingerprint {
    ["wasm", "toml"].map(|ext| {
        let m = std::fs::metadata(dir.join(format!("{name}.{ext}"))).ok()?;
        Some((m.len(), m.modified().ok()?))
    })
}

fn apply(manager: &Manager, dir: &Path, name: &str, since: Instant) {
    let wasm = dir.join(format!("{name}.wasm"));
    let sidecar = dir.join(format!("{name}.toml"));
    if let Err(e) = validate_plugin_name(name) {
        tracing::error!(file = %wasm.display(), "not loaded: invalid plugin name: {e}");
        return;
    }
    if !wasm.exists() {
        if let Some((_, _, Source::Folder)) = manager.running(name) {
            match manager.remove(name) {
                Ok(_) => tracing::info!(
                    plugin = name,
                    "its file was deleted from the plugins folder; unloaded"
                ),
                Err(e) => tracing::error!(plugin = name, error = %e, "unloading failed"),
            }
        }
        return;
    }
    let result = (|| -> anyhow::Result<Option<super::Deployed>> {
        let bytes = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
        let entry =
            PluginConfig::from_sidecar(name, &wasm, sidecar.exists().then_some(sidecar.as_path()))
                .inspect_err(|_| manager.note_refused())?;
        let config = entry
            .config_text()
            .inspect_err(|_| manager.note_refused())?;
        let hash = crate::runtime::content_hash(&bytes);
        if let Some((running, running_config, _)) = manager.running(name)
            && running == hash
            && running_config == config
        {
            return Ok(None);
        }
        let deployed = manager.deploy(DeployRequest {
            name: name.to_string(),
            bytes,
            config: Some(config),
            source: Source::Folder,
            reset_state: false,
            settings: Some((entry.limits, entry.capabilities)),
            path: Some(wasm.clone()),
            received: since,
        })?;
        Ok(Some(deployed))
    })();
    match result {
        Ok(Some(d)) => {
            tracing::info!(plugin = name, file = %wasm.display(), version = &d.version[..12], upload_to_active_ms = d.upload_to_active_ms, "loaded from the plugins folder")
        }
        Ok(None) => tracing::debug!(plugin = name, "unchanged in the plugins folder"),
        Err(e) => {
            tracing::error!(plugin = name, file = %wasm.display(), "not loaded from the plugins folder; the running version stays: {e:#}")
        }
    }
}
