//! File helpers with no dependencies in the crate, shared by the engine's
//! checkpoints, the live manager and the sinks' spools.

use std::path::Path;

/// Writes a file so that readers see the old or the new content, never a mix,
/// and the new content is on disk before the rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
