//! Append-only JSON-lines and line-protocol files in the data dir: the
//! embedded sinks, and the dead-letter and late outputs.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// An append-only file, created with its directory on first use.
pub struct AppendFile {
    path: PathBuf,
    out: Option<BufWriter<File>>,
}

impl AppendFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AppendFile {
            path: path.into(),
            out: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn writer(&mut self) -> std::io::Result<&mut BufWriter<File>> {
        if self.out.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.out = Some(BufWriter::new(f));
        }
        Ok(self.out.as_mut().expect("opened above"))
    }

    /// Appends text as is.
    pub fn write_str(&mut self, s: &str) -> std::io::Result<()> {
        self.writer()?.write_all(s.as_bytes())
    }

    /// Appends one JSON value as a line.
    pub fn write_json(&mut self, v: &serde_json::Value) -> std::io::Result<()> {
        let w = self.writer()?;
        serde_json::to_writer(&mut *w, v)?;
        w.write_all(b"\n")
    }

    /// Flushes to the OS and, with `durable`, to disk.
    pub fn flush(&mut self, durable: bool) -> std::io::Result<()> {
        if let Some(w) = self.out.as_mut() {
            w.flush()?;
            if durable {
                w.get_ref().sync_data()?;
            }
        }
        Ok(())
    }
}

/// A file several threads append to (the dead-letter file: the engine and
/// the sinks' delivery threads).
pub type SharedFile = std::sync::Arc<std::sync::Mutex<AppendFile>>;

impl AppendFile {
    pub fn shared(path: impl Into<PathBuf>) -> SharedFile {
        std::sync::Arc::new(std::sync::Mutex::new(AppendFile::new(path)))
    }

    /// Appends a record and syncs it to disk (dead letters are the last copy
    /// of what they hold); a failure is logged, since the caller has nowhere
    /// else to put it.
    pub fn write_shared(file: &SharedFile, record: &serde_json::Value) {
        let mut f = file.lock().expect("dead-letter file lock");
        if let Err(e) = f.write_json(record).and_then(|()| f.flush(true)) {
            tracing::error!(error = %e, file = %f.path().display(), record = %record, "writing a dead letter failed");
        }
    }
}
