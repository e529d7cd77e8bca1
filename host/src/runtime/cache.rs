//! On-disk cache of compiled components, keyed by the component's SHA-256 and
//! the engine's compatibility hash, so a restart does not recompile and a
//! wasmtime upgrade or config change never loads stale machine code.

use super::PluginError;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use wasmtime::Engine;
use wasmtime::component::Component;

#[derive(Clone)]
pub(crate) struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
}

impl ComponentCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        ComponentCache {
            dir,
            engine_key: format!("{:016x}", h.finish()),
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
            // SAFETY: the file was written by `Component::serialize` of an engine
            // with the same compatibility hash (it is in the name), into a
            // directory owned by this user. A damaged file fails the header
            // checks and we fall back to compiling.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => {
                    tracing::debug!(path = %path.display(), "loaded compiled component from cache");
                    return Ok(c);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable cache entry")
                }
            }
        }
        let component = Component::new(engine, bytes).map_err(PluginError::compile)?;
        if let Err(e) = self.store(&path, &component) {
            // The cache is an optimisation: a read-only disk must not stop a load.
            tracing::warn!(path = %path.display(), error = %e, "could not write the component cache");
        }
        Ok(component)
    }

    fn store(&self, path: &PathBuf, component: &Component) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
        // Write then rename, so a concurrent reader never sees half a file.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}
