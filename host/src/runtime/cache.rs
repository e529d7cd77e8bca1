//! On-disk cache of compiled components, keyed by the component's SHA-256 and
//! the engine's compatibility hash, so a restart does not recompile and a
//! wasmtime upgrade or config change never loads stale machine code.
//!
//! Loading a compiled component runs its machine code, so a cache file is
//! trusted only if it is the one this host wrote: each `.cwasm` has a
//! SHA-256 digest beside it, checked before the bytes are deserialized. A
//! file that does not match (damaged, replaced, or with no digest) is logged
//! and recompiled over.

use super::PluginError;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use wasmtime::Engine;
use wasmtime::component::Component;

/// What the cache did, for tests and diagnostics.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Components loaded from a verified cache file.
    pub hits: AtomicU64,
    /// Components compiled (no file, or one that was refused).
    pub compiled: AtomicU64,
    /// Cache files refused: their digest did not match, or they did not load.
    pub refused: AtomicU64,
}

#[derive(Clone)]
pub(crate) struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
    pub(crate) stats: Arc<CacheStats>,
}

/// The digest file beside a cache entry.
fn digest_path(path: &Path) -> PathBuf {
    path.with_extension("cwasm.sha256")
}

impl ComponentCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        ComponentCache {
            dir,
            engine_key: format!("{:016x}", h.finish()),
            stats: Arc::default(),
        }
    }

    pub(crate) fn get_or_compile(
        &self,
        engine: &Engine,
        hash: &str,
        bytes: &[u8],
    ) -> Result<Component, PluginError> {
        let path = self.dir.join(format!("{hash}-{}.cwasm", self.engine_key));
        if path.exists() {
            match self.load_verified(engine, &path) {
                Ok(c) => {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(path = %path.display(), "loaded compiled component from cache");
                    return Ok(c);
                }
                Err(why) => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(path = %path.display(), "not loading a compiled component from the cache ({why}); compiling it again");
                }
            }
        }
        let component = Component::new(engine, bytes).map_err(PluginError::compile)?;
        self.stats.compiled.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.store(&path, &component) {
            // The cache is an optimisation: a read-only disk must not stop a load.
            tracing::warn!(path = %path.display(), error = %e, "could not write the component cache");
        }
        Ok(component)
    }

    /// Loads a cache file whose bytes match the digest written beside it.
    fn load_verified(&self, engine: &Engine, path: &Path) -> Result<Component, String> {
        let want = std::fs::read_to_string(digest_path(path))
            .map_err(|e| format!("no digest beside it: {e}"))?;
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let got = hex::encode(Sha256::digest(&bytes));
        if want.trim() != got {
            return Err(format!(
                "its SHA-256 is {got}, the digest written with it says {}",
                want.trim()
            ));
        }
        // SAFETY: the bytes are those `Component::serialize` wrote for an
        // engine with the same compatibility hash (it is in the name), as
        // their digest shows; the header checks refuse anything else.
        unsafe { Component::deserialize(engine, &bytes) }.map_err(|e| e.to_string())
    }

    fn store(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        // Write then rename, digest first: a reader that sees the new
        // component file finds its digest (a reader in between sees the old
        // file with a new digest, refuses it and compiles).
        let tmp = |p: &Path| p.with_extension(format!("tmp{}", std::process::id()));
        let dp = digest_path(path);
        std::fs::write(tmp(&dp), digest)?;
        std::fs::rename(tmp(&dp), &dp)?;
        std::fs::write(tmp(path), bytes)?;
        std::fs::rename(tmp(path), path)?;
        Ok(())
    }
}
