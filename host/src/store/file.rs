//! The store on disk: a snapshot of everything (written aside, renamed into
//! place) and an append-only log of what was stored since. Records are
//! framed `[length u32][crc32 u32][payload]`, so a torn or damaged tail (a
//! crash mid-write) is found, cut off and reported, never misread.

use super::data::{Data, Roll, Val};
use crate::runtime::{MetricPoint, Value};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const POINT: u8 = 1;
const ROLL: u8 = 2;
const ALERT: u8 = 3;
/// A payload larger than this is damage, not a record.
const MAX_RECORD: usize = 64 << 20;

struct Enc(Vec<u8>);

impl Enc {
    fn str(&mut self, s: &str) {
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn val(&mut self, v: &Val) {
        match v {
            Val::F(f) => {
                self.0.push(0);
                self.f64(*f);
            }
            Val::I(i) => {
                self.0.push(1);
                self.i64(*i);
            }
            Val::B(b) => self.0.push(2 + u8::from(*b)),
            Val::S(s) => {
                self.0.push(4);
                self.str(s);
            }
        }
    }
    fn tags(&mut self, tags: &[(String, String)]) {
        self.0.extend_from_slice(&(tags.len() as u32).to_le_bytes());
        for (k, v) in tags {
            self.str(k);
            self.str(v);
        }
    }
}

struct Dec<'a>(&'a [u8]);

impl Dec<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("record truncated".into());
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize)
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn f64(&mut self) -> Result<f64, String> {
        Ok(f64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn str(&mut self) -> Result<String, String> {
        let n = self.u32()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| e.to_string())
    }
    fn val(&mut self) -> Result<Val, String> {
        Ok(match self.u8()? {
            0 => Val::F(self.f64()?),
            1 => Val::I(self.i64()?),
            2 => Val::B(false),
            3 => Val::B(true),
            4 => Val::S(self.str()?.into()),
            t => return Err(format!("unknown value tag {t}")),
        })
    }
    fn tags(&mut self) -> Result<Vec<(String, String)>, String> {
        let n = self.u32()?;
        let mut tags = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            tags.push((self.str()?, self.str()?));
        }
        Ok(tags)
    }
}

fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends a point record to `out`.
pub fn encode_point(out: &mut Vec<u8>, p: &MetricPoint) {
    let mut e = Enc(Vec::with_capacity(64));
    e.0.push(POINT);
    e.str(&p.measurement);
    e.tags(&p.tags);
    e.i64(p.timestamp);
    e.0.extend_from_slice(&(p.fields.len() as u32).to_le_bytes());
    for (k, v) in &p.fields {
        e.str(k);
        e.val(&Val::from_value(v));
    }
    frame(out, &e.0);
}

/// Appends an alert record to `out`.
pub fn encode_alert(out: &mut Vec<u8>, record: &serde_json::Value) {
    let mut e = Enc(Vec::with_capacity(256));
    e.0.push(ALERT);
    e.str(&record.to_string());
    frame(out, &e.0);
}

fn encode_roll(
    out: &mut Vec<u8>,
    measurement: &str,
    tags: &[(String, String)],
    field: &str,
    bucket: i64,
    r: &Roll,
) {
    let mut e = Enc(Vec::with_capacity(96));
    e.0.push(ROLL);
    e.str(measurement);
    e.tags(tags);
    e.str(field);
    e.i64(bucket);
    e.f64(r.sum);
    e.f64(r.min);
    e.f64(r.max);
    e.i64(r.count as i64);
    e.val(&r.last);
    e.i64(r.last_ts);
    frame(out, &e.0);
}

/// Applies one record's payload to `data`.
fn apply(data: &mut Data, payload: &[u8]) -> Result<(), String> {
    let mut d = Dec(payload);
    match d.u8()? {
        POINT => {
            let measurement = d.str()?;
            let tags = d.tags()?;
            let timestamp = d.i64()?;
            let n = d.u32()?;
            let mut fields = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                let k = d.str()?;
                let v = match d.val()? {
                    Val::F(f) => Value::Float(f),
                    Val::I(i) => Value::Int(i),
                    Val::B(b) => Value::Boolean(b),
                    Val::S(s) => Value::Str(s.to_string()),
                };
                fields.push((k, v));
            }
            let p = MetricPoint {
                measurement,
                tags,
                fields,
                timestamp,
            };
            // A series refused when it was written stays refused.
            let _ = data.put(&p, usize::MAX);
        }
        ROLL => {
            let measurement = d.str()?;
            let tags = d.tags()?;
            let field = d.str()?;
            let bucket = d.i64()?;
            let roll = Roll {
                sum: d.f64()?,
                min: d.f64()?,
                max: d.f64()?,
                count: d.i64()? as u64,
                last: d.val()?,
                last_ts: d.i64()?,
            };
            data.put_roll(&measurement, tags, &field, bucket, roll);
        }
        ALERT => {
            let v: serde_json::Value =
                serde_json::from_str(&d.str()?).map_err(|e| e.to_string())?;
            data.put_alert(Arc::new(v));
        }
        t => return Err(format!("unknown record type {t}")),
    }
    Ok(())
}

/// How reading a file ended.
pub struct ReadOutcome {
    /// Bytes of whole, valid records.
    pub good: u64,
    pub records: u64,
    /// Why reading stopped before the end, if it did.
    pub damage: Option<String>,
}

/// Reads records from `path` into `data`, up to the first damaged one.
pub fn read_into(path: &Path, data: &mut Data) -> std::io::Result<ReadOutcome> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ReadOutcome {
                good: 0,
                records: 0,
                damage: None,
            });
        }
        Err(e) => return Err(e),
    }
    let mut at = 0usize;
    let mut records = 0;
    let damage = loop {
        if at == bytes.len() {
            break None;
        }
        if bytes.len() - at < 8 {
            break Some(format!("a torn record header at byte {at}"));
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4"));
        if len > MAX_RECORD || bytes.len() - at - 8 < len {
            break Some(format!("a torn record at byte {at}"));
        }
        let payload = &bytes[at + 8..at + 8 + len];
        if crc32fast::hash(payload) != crc {
            break Some(format!(
                "a record whose checksum does not match at byte {at}"
            ));
        }
        if let Err(e) = apply(data, payload) {
            break Some(format!("an unreadable record at byte {at}: {e}"));
        }
        records += 1;
        at += 8 + len;
    };
    Ok(ReadOutcome {
        good: at as u64,
        records,
        damage,
    })
}

/// Writes everything `data` holds as a snapshot at `path` (aside, then renamed).
pub fn write_snapshot(path: &Path, data: &Data) -> std::io::Result<u64> {
    let tmp = path.with_extension("tmp");
    let mut w = BufWriter::new(File::create(&tmp)?);
    let mut buf = Vec::with_capacity(1 << 16);
    let mut written = 0u64;
    let mut flush = |buf: &mut Vec<u8>, w: &mut BufWriter<File>| -> std::io::Result<()> {
        w.write_all(buf)?;
        written += buf.len() as u64;
        buf.clear();
        Ok(())
    };
    for (name, m) in &data.measurements {
        for s in &m.series {
            for (field, c) in &s.fields {
                for (bucket, r) in &c.rolled {
                    encode_roll(&mut buf, name, &s.tags, field, *bucket, r);
                }
                for (ts, v) in c.points() {
                    let value = match v {
                        Val::F(f) => Value::Float(*f),
                        Val::I(i) => Value::Int(*i),
                        Val::B(b) => Value::Boolean(*b),
                        Val::S(s) => Value::Str(s.to_string()),
                    };
                    let p = MetricPoint {
                        measurement: name.clone(),
                        tags: s.tags.clone(),
                        fields: vec![(field.clone(), value)],
                        timestamp: ts,
                    };
                    encode_point(&mut buf, &p);
                }
                if buf.len() > 1 << 16 {
                    flush(&mut buf, &mut w)?;
                }
            }
        }
    }
    for a in &data.alerts {
        encode_alert(&mut buf, &a.record);
    }
    flush(&mut buf, &mut w)?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(written)
}

/// The append-only log: records since the snapshot.
pub struct Log {
    path: PathBuf,
    file: File,
    pub bytes: u64,
}

impl Log {
    /// Opens the log for appends, cutting it to `good` bytes (a torn tail).
    pub fn open(path: PathBuf, good: u64) -> std::io::Result<Log> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        file.set_len(good)?;
        let mut log = Log {
            path,
            file,
            bytes: good,
        };
        std::io::Seek::seek(&mut log.file, std::io::SeekFrom::End(0))?;
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends framed records; on an error the log is cut back, so it
    /// never ends in half a record.
    pub fn append(&mut self, records: &[u8]) -> std::io::Result<()> {
        if let Err(e) = self.file.write_all(records) {
            let _ = self.file.set_len(self.bytes);
            let _ = std::io::Seek::seek(&mut self.file, std::io::SeekFrom::End(0));
            return Err(e);
        }
        self.bytes += records.len() as u64;
        Ok(())
    }

    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Empties the log (its records are in a new snapshot).
    pub fn reset(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        std::io::Seek::seek(&mut self.file, std::io::SeekFrom::Start(0))?;
        self.file.sync_all()?;
        self.bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = Log::open(path.clone(), 0).unwrap();
        let mut buf = Vec::new();
        let p = MetricPoint {
            measurement: "m".into(),
            tags: vec![("k".into(), "v".into())],
            fields: vec![
                ("f".into(), Value::Float(1.5)),
                ("s".into(), Value::Str("x".into())),
            ],
            timestamp: 60_000,
        };
        encode_point(&mut buf, &p);
        encode_alert(
            &mut buf,
            &serde_json::json!({"status": "firing", "fingerprint": "a"}),
        );
        log.append(&buf).unwrap();
        // Half a record, as a crash mid-write leaves it.
        let mut torn = Vec::new();
        encode_point(&mut torn, &p);
        log.append(&torn[..torn.len() / 2]).unwrap();
        let mut data = Data::new();
        let r = read_into(&path, &mut data).unwrap();
        assert_eq!(r.records, 2);
        assert_eq!(r.good, buf.len() as u64);
        assert!(r.damage.unwrap().contains("torn"));
        assert_eq!(data.series_count, 1);
        assert_eq!(data.firing.len(), 1);
        // A flipped bit is found by the checksum.
        let mut bad = buf.clone();
        bad[12] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let r = read_into(&path, &mut Data::new()).unwrap();
        assert_eq!(r.records, 0);
        assert!(r.damage.unwrap().contains("checksum"));
    }
}
