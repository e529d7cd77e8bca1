//! Checkpoints in the data dir: each stateful plugin's snapshot in its own
//! file, plus a manifest with event time, written last and atomically, so a
//! crash mid-checkpoint leaves the previous complete checkpoint in force.

use crate::dataflow::Watermark;
use crate::dataflow::dedupe::Dedupe;
use crate::fsutil::write_atomic;
use crate::runtime::Plugin;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// Highest event time seen, and the watermark, at the checkpoint.
    max_event_time: i64,
    watermark: i64,
    /// Plugin name -> state file (relative to the checkpoint dir) and version.
    plugins: BTreeMap<String, Entry>,
    /// The event ids taken (see [`crate::dataflow::dedupe`]), relative to the checkpoint dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_ids: Option<String>,
    /// The last write-ahead log record the state includes (0: none); a
    /// restart replays the log after it.
    #[serde(default)]
    wal_seq: u64,
}

/// What a checkpoint restored besides plugin state.
#[derive(Debug, Clone, Copy)]
pub struct Restored {
    pub max_event_time: i64,
    pub watermark: i64,
    pub wal_seq: u64,
}

/// A checkpoint taken and not yet committed: it waits in memory until the
/// sinks have settled what the engine emitted before it.
pub struct Snapshot {
    states: Vec<(String, String, Vec<u8>)>,
    event_ids: Option<Vec<u8>>,
    max_event_time: i64,
    watermark: i64,
    pub wal_seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    file: String,
    version: String,
}

pub struct Checkpoints {
    dir: PathBuf,
    generation: u64,
    /// The plugin entries of the last committed manifest.
    committed: BTreeMap<String, Entry>,
}

impl Checkpoints {
    pub fn new(dir: PathBuf) -> Self {
        Checkpoints {
            dir,
            generation: 0,
            committed: BTreeMap::new(),
        }
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    /// Restores every plugin that has a saved state and the event ids taken;
    /// returns the saved event time as (highest event time seen, watermark).
    pub fn restore(
        &mut self,
        plugins: &mut [Plugin],
        dedupe: &mut Dedupe,
    ) -> Result<Option<Restored>> {
        let path = self.manifest_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let manifest: Manifest =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        for p in plugins.iter_mut() {
            let Some(entry) = manifest.plugins.get(p.name()) else {
                continue;
            };
            let file = self.dir.join(&entry.file);
            let state =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let parts = match p.restore(&state) {
                Ok(parts) => parts,
                Err(e) => bail!(
                    "plugin `{}` rejected its checkpoint {} ({e}); its open windows and timers would be lost. \
                     Move the file away to start the plugin empty",
                    p.name(),
                    file.display()
                ),
            };
            tracing::info!(
                plugin = p.name(),
                bytes = state.len(),
                kept = %parts.kept.join(","),
                reset = %parts.reset.join(","),
                dropped = %parts.dropped.join(","),
                added = %parts.added.join(","),
                "restored plugin state"
            );
        }
        if let Some(name) = &manifest.event_ids {
            let file = self.dir.join(name);
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            if let Err(e) = dedupe.restore(&bytes) {
                bail!(
                    "the event ids of the checkpoint, {}, are unreadable ({e}). \
                     Move the file away to start without them (a client's retry of an event \
                     taken before the checkpoint would then be counted again)",
                    file.display()
                );
            }
            tracing::info!(ids = dedupe.len(), "restored the event ids taken");
        }
        // Resume numbering after the files on disk.
        self.generation = manifest
            .plugins
            .values()
            .filter_map(|e| e.file.rsplit('.').nth(1)?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        self.committed = manifest.plugins;
        Ok(Some(Restored {
            max_event_time: manifest.max_event_time,
            watermark: manifest.watermark,
            wal_seq: manifest.wal_seq,
        }))
    }

    /// Snapshots every stateful plugin and commits a new manifest at once.
    pub fn save(
        &mut self,
        plugins: &mut [Plugin],
        watermark: &Watermark,
        dedupe: &Dedupe,
        wal_seq: u64,
    ) -> Result<()> {
        let snap = Self::take(plugins, watermark, dedupe, wal_seq);
        self.commit(snap, plugins)
    }

    /// Snapshots every stateful plugin, the event time and ids, in memory.
    pub fn take(
        plugins: &mut [Plugin],
        watermark: &Watermark,
        dedupe: &Dedupe,
        wal_seq: u64,
    ) -> Snapshot {
        let mut states = Vec::new();
        for p in plugins.iter_mut() {
            match p.checkpoint() {
                Ok(Some(s)) => states.push((p.name().to_string(), p.component().hash.clone(), s)),
                Ok(None) => {}
                // Its previous state file stays: the old checkpoint stays valid for it.
                Err(f) => {
                    tracing::error!(plugin = p.name(), error = %f, "snapshot failed; keeping its previous checkpoint")
                }
            }
        }
        Snapshot {
            states,
            event_ids: (!dedupe.is_empty()).then(|| dedupe.snapshot()),
            max_event_time: watermark.max_event_time(),
            watermark: watermark.current(),
            wal_seq,
        }
    }

    /// Writes a snapshot's files and then its manifest, atomically: from
    /// here on a start restores it. `plugins` is the pipeline now (a plugin
    /// removed since is left out).
    pub fn commit(&mut self, snap: Snapshot, plugins: &[Plugin]) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        self.generation += 1;
        let g = self.generation;
        let mut entries = BTreeMap::new();
        for (name, version, state) in snap.states {
            if !plugins.iter().any(|p| p.name() == name) {
                continue;
            }
            let file = format!("{name}.{g}.state");
            write_atomic(&self.dir.join(&file), &state)
                .with_context(|| format!("writing {}", file))?;
            entries.insert(name, Entry { file, version });
        }
        // Plugins whose snapshot failed keep their last good entry.
        for (name, e) in &self.committed {
            if plugins.iter().any(|p| p.name() == name) {
                entries.entry(name.clone()).or_insert_with(|| e.clone());
            }
        }
        let event_ids = match snap.event_ids {
            Some(bytes) => {
                let file = format!("event-ids.{g}.state");
                write_atomic(&self.dir.join(&file), &bytes)
                    .with_context(|| format!("writing {file}"))?;
                Some(file)
            }
            None => None,
        };
        let manifest = Manifest {
            max_event_time: snap.max_event_time,
            watermark: snap.watermark,
            plugins: entries,
            event_ids,
            wal_seq: snap.wal_seq,
        };
        write_atomic(
            &self.manifest_path(),
            &serde_json::to_vec_pretty(&manifest).expect("manifest serializes"),
        )
        .context("writing the checkpoint manifest")?;
        self.committed = manifest.plugins;
        // Remove state files no manifest refers to any more.
        if let Ok(dir) = std::fs::read_dir(&self.dir) {
            for f in dir.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                let referenced = self.committed.values().any(|e| e.file == name)
                    || manifest.event_ids.as_deref() == Some(name.as_str());
                if name.ends_with(".state") && !referenced {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        Ok(())
    }
}
