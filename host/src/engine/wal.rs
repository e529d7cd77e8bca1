//! The embedded engine's write-ahead log: each accepted batch is appended,
//! and made as durable as `fsync` asks, before its request is answered.
//!
//! - **Segments** `data_dir/wal/<first seq, 20 digits>.wal`, each a run of
//!   records `[len u32][crc32 u32][seq u64][events u32][payload]` (little
//!   endian; the checksum covers seq, events and payload). A segment is
//!   closed at `segment_bytes` and removed once a checkpoint covers its last
//!   record.
//! - **Group commit**: one writer thread takes every append waiting, writes
//!   them, syncs once (`fsync = "always"`) and only then hands each batch on
//!   and answers it, in log order. With `"interval"` it answers once the
//!   bytes are written (a killed process loses nothing: they are in the
//!   kernel) and syncs every interval (a power cut loses up to that).
//! - **Recovery**: a record cut short or failing its checksum at the end of
//!   the last segment is a torn write: cut off and reported. The same in an
//!   earlier segment stops the start with the file and offset.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

/// A batch's place in the log: 1, 2, 3… across segments and restarts.
pub type Seq = u64;

const HEADER: usize = 4 + 4 + 8 + 4;
/// A record bigger than this is corruption, not data (a batch is bounded by
/// the request body limit, far below).
const MAX_RECORD: usize = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Sync before answering: nothing answered is lost, even to a power cut.
    Always,
    /// Answer once written; sync at this interval.
    Interval(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "write-ahead log segment {} is corrupt at byte {offset} ({reason}); it is not the last \
         segment, so the records after it cannot be trusted either. To start without them (their \
         events are lost), move {} and every later segment out of {}",
        file.display(), file.display(), dir.display()
    )]
    Corrupt {
        file: PathBuf,
        dir: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("the write-ahead log's writer stopped")]
    Stopped,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A record found in the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: Seq,
    pub events: u32,
    pub payload: Vec<u8>,
}

/// A torn write cut off the end of the log when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Torn {
    pub file: PathBuf,
    pub offset: u64,
    pub bytes: u64,
    pub reason: String,
}

fn segment_name(first: Seq) -> String {
    format!("{first:020}.wal")
}

/// The segments in `dir`, by first sequence number.
fn segments(dir: &Path) -> Result<Vec<(Seq, PathBuf)>, WalError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<Seq>().ok())
        else {
            continue;
        };
        out.push((first, entry.path()));
    }
    out.sort();
    Ok(out)
}

fn frame(seq: Seq, events: u32, payload: &[u8], out: &mut Vec<u8>) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(&events.to_le_bytes());
    crc.update(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&events.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Where a segment stops making sense, and why.
type Bad = Option<(u64, String)>;

/// Reads a segment's records; stops at the first bad one, returning where
/// and why.
fn read_segment(path: &Path) -> Result<(Vec<Record>, Bad), WalError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io(path))?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let bad = |why: &str| Some((at as u64, why.to_string()));
        if bytes.len() - at < HEADER {
            return Ok((records, bad("a record header cut short")));
        }
        let h = &bytes[at..at + HEADER];
        let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            return Ok((records, bad("a record length out of range")));
        }
        if bytes.len() - at - HEADER < len {
            return Ok((records, bad("a record cut short")));
        }
        let mut check = crc32fast::Hasher::new();
        check.update(&h[8..HEADER]);
        check.update(&bytes[at + HEADER..at + HEADER + len]);
        if check.finalize() != crc {
            return Ok((records, bad("a record failing its checksum")));
        }
        records.push(Record {
            seq: u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")),
            events: u32::from_le_bytes(h[16..20].try_into().expect("4 bytes")),
            payload: bytes[at + HEADER..at + HEADER + len].to_vec(),
        });
        at += HEADER + len;
    }
    Ok((records, None))
}

/// What opening the log found: the next sequence number, and a torn tail
/// if one was cut off (see [`replay`] for the records).
pub struct Opened {
    pub dir: PathBuf,
    pub next: Seq,
    pub torn: Option<Torn>,
}

/// Checks every segment and cuts a torn tail off the last one.
pub fn open(dir: &Path) -> Result<Opened, WalError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let segs = segments(dir)?;
    let mut next = 1;
    let mut torn = None;
    for (i, (first, path)) in segs.iter().enumerate() {
        let (records, bad) = read_segment(path)?;
        next = records.last().map_or(next.max(*first), |r| r.seq + 1);
        if let Some((offset, reason)) = bad {
            if i + 1 < segs.len() {
                return Err(WalError::Corrupt {
                    file: path.clone(),
                    dir: dir.to_path_buf(),
                    offset,
                    reason,
                });
            }
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io(path))?;
            let len = f.metadata().map_err(io(path))?.len();
            f.set_len(offset).map_err(io(path))?;
            f.sync_all().map_err(io(path))?;
            tracing::warn!(file = %path.display(), offset, bytes = len - offset, reason, "cut a torn write off the end of the write-ahead log");
            torn = Some(Torn {
                file: path.clone(),
                offset,
                bytes: len - offset,
                reason,
            });
        }
    }
    Ok(Opened {
        dir: dir.to_path_buf(),
        next,
        torn,
    })
}

/// Every record after `after`, in order (what a restart replays).
pub fn replay(dir: &Path, after: Seq) -> Result<Vec<Record>, WalError> {
    let mut out = Vec::new();
    replay_each(dir, after, |r| out.push(r))?;
    Ok(out)
}

/// [`replay`] a segment at a time, so a long log is never all in memory.
pub fn replay_each(dir: &Path, after: Seq, mut f: impl FnMut(Record)) -> Result<(), WalError> {
    let segs = segments(dir)?;
    for (i, (_, path)) in segs.iter().enumerate() {
        // A segment whose successor starts at or before `after + 1` holds nothing newer.
        if segs.get(i + 1).is_some_and(|(next, _)| *next <= after + 1) {
            continue;
        }
        let (records, _) = read_segment(path)?;
        records
            .into_iter()
            .filter(|r| r.seq > after)
            .for_each(&mut f);
    }
    Ok(())
}

/// Whether `dir` holds any segment (a start without the log configured
/// still replays one it finds).
pub fn exists(dir: &Path) -> Result<bool, WalError> {
    Ok(!segments(dir)?.is_empty())
}

/// Removes every segment (once a checkpoint covers a log that no writer
/// appends to).
pub fn remove_all(dir: &Path) -> Result<usize, WalError> {
    let segs = segments(dir)?;
    for (_, path) in &segs {
        std::fs::remove_file(path).map_err(io(path))?;
    }
    Ok(segs.len())
}

/// Removes the segments whose every record is at or before `covered` (a
/// checkpoint holds them); never the one being written.
pub fn remove_covered(dir: &Path, covered: Seq) -> Result<usize, WalError> {
    let segs = segments(dir)?;
    let mut removed = 0;
    for w in segs.windows(2) {
        // Every record of w[0] is before w[1]'s first.
        if w[1].0 <= covered + 1 {
            std::fs::remove_file(&w[0].1).map_err(io(&w[0].1))?;
            removed += 1;
        }
    }
    Ok(removed)
}

struct Append<T> {
    events: u32,
    payload: Vec<u8>,
    item: T,
    reply: tokio::sync::oneshot::Sender<Result<Seq, String>>,
}

/// The writing end: appends go to the writer thread (see the module).
pub struct Wal<T> {
    tx: SyncSender<Append<T>>,
}

impl<T> Clone for Wal<T> {
    fn clone(&self) -> Self {
        Wal {
            tx: self.tx.clone(),
        }
    }
}

/// What the writer did, for the tests and the metrics.
pub type Counts = crate::telemetry::WalFigures;

impl<T: Send + 'static> Wal<T> {
    /// Starts the writer on an opened log. `hand_on` gets each batch once
    /// it is as durable as `fsync` asks, in log order, before its answer.
    pub fn start(
        opened: Opened,
        fsync: Fsync,
        segment_bytes: u64,
        counts: std::sync::Arc<Counts>,
        hand_on: impl FnMut(Seq, T) + Send + 'static,
    ) -> Result<Self, WalError> {
        let writer = Writer::new(opened, fsync, segment_bytes, counts)?;
        // Bounded: a full writer holds requests back.
        let (tx, rx) = std::sync::mpsc::sync_channel(1024);
        std::thread::Builder::new()
            .name("nexuspipe-wal".into())
            .spawn(move || writer.run(rx, hand_on))
            .map_err(io(Path::new("the writer thread")))?;
        Ok(Wal { tx })
    }

    /// Appends a batch (`events` events, encoded as `payload`); returns its
    /// place once durable and handed on.
    pub async fn append(&self, events: u32, payload: Vec<u8>, item: T) -> Result<Seq, WalError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let tx = self.tx.clone();
        let a = Append {
            events,
            payload,
            item,
            reply,
        };
        match tx.try_send(a) {
            Ok(()) => {}
            // The channel is bounded: waiting for room is blocking work.
            Err(std::sync::mpsc::TrySendError::Full(a)) => {
                tokio::task::spawn_blocking(move || tx.send(a))
                    .await
                    .map_err(|_| WalError::Stopped)?
                    .map_err(|_| WalError::Stopped)?
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(WalError::Stopped),
        }
        match answer.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(WalError::Io {
                path: PathBuf::from("write-ahead log"),
                source: std::io::Error::other(e),
            }),
            Err(_) => Err(WalError::Stopped),
        }
    }
}

struct Writer {
    dir: PathBuf,
    fsync: Fsync,
    segment_bytes: u64,
    next: Seq,
    file: File,
    path: PathBuf,
    size: u64,
    last_sync: Instant,
    dirty: bool,
    counts: std::sync::Arc<Counts>,
}

impl Writer {
    fn new(
        opened: Opened,
        fsync: Fsync,
        segment_bytes: u64,
        counts: std::sync::Arc<Counts>,
    ) -> Result<Self, WalError> {
        // Appends go to a new segment: the last one may end where a torn write was cut.
        let path = opened.dir.join(segment_name(opened.next));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let size = file.metadata().map_err(io(&path))?.len();
        sync_dir(&opened.dir)?;
        Ok(Writer {
            dir: opened.dir,
            fsync,
            segment_bytes,
            next: opened.next,
            file,
            path,
            size,
            last_sync: Instant::now(),
            dirty: false,
            counts,
        })
    }

    fn run<T>(mut self, rx: Receiver<Append<T>>, mut hand_on: impl FnMut(Seq, T)) {
        let tick = match self.fsync {
            Fsync::Interval(d) => d,
            Fsync::Always => Duration::from_secs(3600),
        };
        let mut buf = Vec::new();
        loop {
            let first = match rx.recv_timeout(tick.saturating_sub(self.last_sync.elapsed())) {
                Ok(a) => a,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.sync() {
                        tracing::error!(error = %e, "syncing the write-ahead log");
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            };
            // Every append waiting goes in this group.
            let mut group = vec![first];
            while let Ok(a) = rx.try_recv() {
                group.push(a);
            }
            buf.clear();
            let (size_before, next_before) = (self.size, self.next);
            let mut seqs = Vec::with_capacity(group.len());
            for a in &group {
                seqs.push(self.next);
                frame(self.next, a.events, &a.payload, &mut buf);
                self.next += 1;
            }
            let written = self.write(&buf).and_then(|()| match self.fsync {
                Fsync::Always => self.sync(),
                Fsync::Interval(d) if self.last_sync.elapsed() >= d => self.sync(),
                Fsync::Interval(_) => Ok(()),
            });
            self.counts
                .appends
                .fetch_add(group.len() as u64, std::sync::atomic::Ordering::Relaxed);
            for (a, seq) in group.into_iter().zip(seqs) {
                match &written {
                    Ok(()) => {
                        hand_on(seq, a.item);
                        let _ = a.reply.send(Ok(seq));
                    }
                    Err(e) => {
                        let _ = a.reply.send(Err(e.to_string()));
                    }
                }
            }
            if let Err(e) = written {
                tracing::error!(error = %e, "writing the write-ahead log; its batches were refused");
                // Refused batches are not in the log: what part was written goes.
                self.next = next_before;
                self.size = size_before;
                if let Err(e) = self.file.set_len(size_before) {
                    tracing::error!(error = %e, "cutting a failed write off the write-ahead log");
                }
            } else if self.size >= self.segment_bytes
                && let Err(e) = self.rotate()
            {
                tracing::error!(error = %e, "starting a new write-ahead log segment");
            }
        }
        let _ = self.sync();
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), WalError> {
        self.file.write_all(bytes).map_err(io(&self.path))?;
        self.size += bytes.len() as u64;
        self.dirty = true;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), WalError> {
        self.last_sync = Instant::now();
        if !std::mem::take(&mut self.dirty) {
            return Ok(());
        }
        self.counts
            .syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.file.sync_data().map_err(io(&self.path))
    }

    fn rotate(&mut self) -> Result<(), WalError> {
        self.sync()?;
        let path = self.dir.join(segment_name(self.next));
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        self.path = path;
        self.size = 0;
        sync_dir(&self.dir)
    }
}

/// Makes a new segment's name durable.
fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    type Handed = Arc<std::sync::Mutex<Vec<(Seq, String)>>>;

    fn start(dir: &Path, fsync: Fsync, segment_bytes: u64) -> (Wal<String>, Handed, Arc<Counts>) {
        let handed: Handed = Arc::default();
        let counts = Arc::new(Counts::default());
        let h = handed.clone();
        let wal = Wal::start(
            open(dir).unwrap(),
            fsync,
            segment_bytes,
            counts.clone(),
            move |seq, item| h.lock().unwrap().push((seq, item)),
        )
        .unwrap();
        (wal, handed, counts)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap()
    }

    async fn put(wal: &Wal<String>, text: &str) -> Seq {
        wal.append(1, text.as_bytes().to_vec(), text.to_string())
            .await
            .unwrap()
    }

    fn payloads(records: &[Record]) -> Vec<(Seq, String)> {
        records
            .iter()
            .map(|r| (r.seq, String::from_utf8(r.payload.clone()).unwrap()))
            .collect()
    }

    /// Appended batches are handed on in log order, and a restart finds
    /// them all and goes on numbering after them.
    #[test]
    fn appends_are_handed_on_in_order_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let (wal, handed, _) = start(dir.path(), Fsync::Always, 1 << 20);
        let seqs: Vec<Seq> = rt.block_on(async {
            vec![
                put(&wal, "a").await,
                put(&wal, "b").await,
                put(&wal, "c").await,
            ]
        });
        assert_eq!(seqs, [1, 2, 3]);
        let expected = vec![(1, "a".into()), (2, "b".into()), (3, "c".into())];
        assert_eq!(*handed.lock().unwrap(), expected);
        drop(wal);
        assert_eq!(payloads(&replay(dir.path(), 1).unwrap()), expected[1..]);
        let (wal, _, _) = start(dir.path(), Fsync::Always, 1 << 20);
        assert_eq!(rt.block_on(put(&wal, "d")), 4);
    }

    /// A record cut short at the end (a torn write) is cut off and
    /// reported, the records before it kept; appends go on after it.
    #[test]
    fn a_torn_tail_is_cut_off_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let (wal, _, _) = start(dir.path(), Fsync::Always, 1 << 20);
        rt.block_on(async {
            put(&wal, "first").await;
            put(&wal, "second").await;
        });
        drop(wal);
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        // The second record is HEADER + 6 bytes long: keep its first 10.
        let good = len - (HEADER as u64 + 6);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(good + 10)
            .unwrap();
        let opened = open(dir.path()).unwrap();
        let torn = opened.torn.clone().expect("a torn tail");
        assert_eq!(
            (torn.file.clone(), torn.offset, torn.bytes),
            (path.clone(), good, 10)
        );
        assert_eq!(torn.reason, "a record header cut short");
        assert_eq!(opened.next, 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
        let (wal, _, _) = start(dir.path(), Fsync::Always, 1 << 20);
        assert_eq!(rt.block_on(put(&wal, "again")), 2);
        drop(wal);
        assert_eq!(
            payloads(&replay(dir.path(), 0).unwrap()),
            [(1, "first".to_string()), (2, "again".to_string())]
        );
    }

    /// A bad record in a segment that is not the last stops the start,
    /// naming the file, the offset and what to do.
    #[test]
    fn a_corrupt_earlier_segment_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        // Tiny segments: one record each.
        let (wal, _, _) = start(dir.path(), Fsync::Always, 1);
        rt.block_on(async {
            for t in ["one", "two", "three"] {
                put(&wal, t).await;
            }
        });
        drop(wal);
        let segs = segments(dir.path()).unwrap();
        assert!(segs.len() >= 3, "{segs:?}");
        let first = &segs[0].1;
        let mut bytes = std::fs::read(first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff; // the payload's last byte
        std::fs::write(first, bytes).unwrap();
        let Err(e) = open(dir.path()) else {
            panic!("a corrupt first segment was accepted")
        };
        let text = e.to_string();
        assert!(matches!(e, WalError::Corrupt { offset: 0, .. }), "{text}");
        assert!(text.contains(&first.display().to_string()), "{text}");
        assert!(text.contains("checksum") && text.contains("move"), "{text}");
    }

    /// Appends waiting while a sync runs share the next one: 64 appends,
    /// the first held until the 63 others are queued, take two syncs.
    #[test]
    fn appends_waiting_together_share_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let handed: Handed = Arc::default();
        let counts = Arc::new(Counts::default());
        let (called, first_called) = std::sync::mpsc::channel();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let h = handed.clone();
        let wal = Wal::start(
            open(dir.path()).unwrap(),
            Fsync::Always,
            1 << 20,
            counts.clone(),
            move |seq, item| {
                if seq == 1 {
                    called.send(()).unwrap();
                    gate.recv().unwrap();
                }
                h.lock().unwrap().push((seq, item));
            },
        )
        .unwrap();
        let seqs = rt.block_on(async {
            let w = wal.clone();
            let first = tokio::spawn(async move { put(&w, "0").await });
            tokio::task::spawn_blocking(move || first_called.recv().unwrap())
                .await
                .unwrap();
            let names: Vec<String> = (1..64).map(|i| i.to_string()).collect();
            let mut rest = std::pin::pin!(futures_util::future::join_all(
                names.iter().map(|n| put(&wal, n))
            ));
            // One poll queues every append.
            assert!(rest.as_mut().now_or_never().is_none());
            release.send(()).unwrap();
            let mut seqs = vec![first.await.unwrap()];
            seqs.extend(rest.await);
            seqs
        });
        assert_eq!(seqs, (1..=64).collect::<Vec<Seq>>());
        let order: Vec<String> = handed
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| t.clone())
            .collect();
        assert_eq!(order, (0..64).map(|i| i.to_string()).collect::<Vec<_>>());
        assert_eq!(counts.appends.load(Ordering::Relaxed), 64);
        assert_eq!(counts.syncs.load(Ordering::Relaxed), 2);
    }

    /// Segments a checkpoint covers go; the records after it stay.
    #[test]
    fn covered_segments_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let (wal, _, _) = start(dir.path(), Fsync::Interval(Duration::from_millis(10)), 1);
        rt.block_on(async {
            for t in ["1", "2", "3", "4"] {
                put(&wal, t).await;
            }
        });
        drop(wal);
        // One record per segment (the writer may have opened an empty one
        // after them, or not yet).
        let holding = |dir: &Path| -> Vec<Seq> {
            let segs = segments(dir).unwrap();
            segs.iter()
                .filter(|(_, p)| std::fs::metadata(p).unwrap().len() > 0)
                .map(|s| s.0)
                .collect()
        };
        assert_eq!(holding(dir.path()), [1, 2, 3, 4]);
        assert_eq!(remove_covered(dir.path(), 2).unwrap(), 2);
        assert_eq!(holding(dir.path()), [3, 4]);
        assert_eq!(
            payloads(&replay(dir.path(), 2).unwrap()),
            [(3, "3".to_string()), (4, "4".to_string())]
        );
    }
}
