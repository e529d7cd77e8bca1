//! Append-only JSON-lines and line-protocol files in the data dir: the
//! embedded sinks, and the dead-letter and late outputs.
//!
//! A write that fails (a full disk, an I/O error) loses nothing: the file is
//! cut back to its last complete record, so it never holds half a line, and
//! the bytes stay pending in memory until a later flush succeeds. The engine
//! waits for that (back-pressure) instead of writing on.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An append-only file, created with its directory on first use.
pub struct AppendFile {
    path: PathBuf,
    file: Option<File>,
    /// Records not yet written to the file.
    pending: Vec<u8>,
    /// The file's length after the last complete write.
    good_len: u64,
}

impl AppendFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AppendFile {
            path: path.into(),
            file: None,
            pending: Vec::new(),
            good_len: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&self.path)?;
            self.good_len = complete_len(&f)?;
            if self.good_len < f.metadata()?.len() {
                // A `kill -9` can cut a write short between pages: the
                // record it held is not covered by a checkpoint, so the
                // engine writes it again after its replay. Drop the half.
                tracing::warn!(file = %self.path.display(), kept_bytes = self.good_len, "cutting a half-written last record left by a crash");
                f.set_len(self.good_len)?;
            }
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Appends text as is (written at the next flush).
    pub fn write_str(&mut self, s: &str) {
        self.pending.extend_from_slice(s.as_bytes());
    }

    /// Appends one JSON value as a line (written at the next flush).
    pub fn write_json(&mut self, v: &serde_json::Value) {
        serde_json::to_writer(&mut self.pending, v).expect("writing JSON to memory");
        self.pending.push(b'\n');
    }

    /// Bytes waiting to be written (after a failed flush).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Writes what is pending to the file and, with `durable`, to disk. On
    /// an error the file is cut back to its last complete write and the
    /// bytes stay pending, so a later flush writes each record exactly once.
    pub fn flush(&mut self, durable: bool) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let good = self.good_len;
            let pending = std::mem::take(&mut self.pending);
            let f = match self.file() {
                Ok(f) => f,
                Err(e) => {
                    self.pending = pending;
                    return Err(e);
                }
            };
            let written = f
                .write_all(&pending)
                .and_then(|()| if durable { f.sync_data() } else { Ok(()) });
            if let Err(e) = written {
                // A part of the records may have reached the file: drop it.
                let _ = f.set_len(good);
                self.pending = pending;
                return Err(e);
            }
            self.good_len += pending.len() as u64;
            // Keep the buffer's capacity for the next round's records.
            self.pending = pending;
            self.pending.clear();
        } else if durable && let Some(f) = &self.file {
            f.sync_data()?;
        }
        Ok(())
    }
}

/// The length of `f` up to and including its last newline: every record
/// ends with one, so bytes after it are a write that did not finish.
fn complete_len(f: &File) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata()?.len();
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let buf = &mut block[..(end - start) as usize];
        f.read_exact_at(buf, start)?;
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// A file several threads append to (the dead-letter file: the engine and
/// the sinks' delivery threads).
pub type SharedFile = std::sync::Arc<std::sync::Mutex<AppendFile>>;

impl AppendFile {
    pub fn shared(path: impl Into<PathBuf>) -> SharedFile {
        std::sync::Arc::new(std::sync::Mutex::new(AppendFile::new(path)))
    }

    /// Appends a record and syncs it to disk (dead letters are the last copy
    /// of what they hold). A failed write keeps the record pending; the
    /// engine's next flush of the file retries it.
    pub fn write_shared(file: &SharedFile, record: &serde_json::Value) {
        Self::write_all_shared(file, std::slice::from_ref(record));
    }

    /// Appends records and syncs them to disk once (see [`Self::write_shared`]).
    pub fn write_all_shared(file: &SharedFile, records: &[serde_json::Value]) {
        let mut f = file.lock().expect("dead-letter file lock");
        for record in records {
            f.write_json(record);
        }
        if let Err(e) = f.flush(true) {
            tracing::error!(error = %e, file = %f.path().display(), pending_bytes = f.pending(), "writing a dead letter failed; it is kept in memory and written when the disk takes it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_half_written_last_record_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.lp");
        // What a crash mid-write leaves: two records and half of a third.
        std::fs::write(&path, "a v=1i 1\nb v=2i 2\nc v=").unwrap();
        let mut f = AppendFile::new(&path);
        f.write_str("c v=3i 3\n");
        f.flush(false).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "a v=1i 1\nb v=2i 2\nc v=3i 3\n"
        );

        // No newline at all: nothing of it was complete.
        std::fs::write(&path, "x".repeat(70_000)).unwrap();
        let mut f = AppendFile::new(&path);
        f.write_str("d v=4i 4\n");
        f.flush(false).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "d v=4i 4\n");
    }

    #[test]
    fn a_failed_write_keeps_its_records_pending() {
        // /dev/full answers every write with ENOSPC, as a full disk does.
        let mut f = AppendFile::new("/dev/full");
        f.write_str("one\n");
        f.write_json(&serde_json::json!({"n": 2}));
        let err = f.flush(true).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "ENOSPC: {err}");
        assert_eq!(f.pending(), "one\n{\"n\":2}\n".len());
        f.write_str("three\n");
        assert!(f.flush(false).is_err());
        assert_eq!(
            f.pending(),
            "one\n{\"n\":2}\nthree\n".len(),
            "nothing dropped"
        );
    }
}
