//! Idempotent ingest: an event whose `event_id` the engine has already
//! taken is acknowledged and not processed again. That is what makes a
//! client's retry safe when the answer, not the request, was lost (the
//! browser tracker retries; so does any at-least-once sender).
//!
//! Ids are remembered for a horizon of event time behind the watermark (the
//! allowed out-of-orderness and lateness plus ten minutes) and at most
//! `max` of them, the oldest taken forgotten first. An event older than the
//! horizon is late anyway: the watermark has passed its windows, so a copy
//! of it cannot be counted twice in them (it goes to `late.jsonl`). The
//! set is part of the checkpoint, so it survives restarts.

use std::collections::{HashSet, VecDeque};

/// Ten minutes of event time beyond out-of-orderness and lateness.
pub const EXTRA_HORIZON_MS: i64 = 10 * 60_000;

const MAGIC: &[u8; 8] = b"NPIDS\x00\x00\x01";

pub struct Dedupe {
    /// foldhash, seeded per process: a few ns a key where std's SipHash
    /// took tens, twice per event (insert, and forgetting the oldest).
    seen: HashSet<u128, foldhash::fast::RandomState>,
    /// Keys and their event times in the order taken, to forget the oldest first.
    order: VecDeque<(u128, i64)>,
    max: usize,
    horizon_ms: i64,
}

/// A 128-bit key: the UUID itself (what the tracker sends), else the id's
/// XXH3-128 (stable by its spec, so keys in a checkpoint still match after
/// an upgrade; about 10 ns an id, where a SHA-1 name-based UUID took 150).
/// None for an id the server made: no client can be retrying it, and
/// remembering it would only push clients' ids out under the cap.
fn key(id: &str) -> Option<u128> {
    match uuid::Uuid::try_parse(id) {
        Ok(u) if crate::event::is_server_event_id(&u) => None,
        Ok(u) => Some(u.as_u128()),
        Err(_) => Some(xxhash_rust::xxh3::xxh3_128(id.as_bytes())),
    }
}

impl Dedupe {
    /// `max` 0 turns it off.
    pub fn new(max: usize, horizon_ms: i64) -> Self {
        Dedupe {
            seen: HashSet::default(),
            order: VecDeque::new(),
            max,
            horizon_ms,
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Whether this is the first time the engine takes `id` (and remembers it).
    pub fn first(&mut self, id: &str, timestamp: i64) -> bool {
        if self.max == 0 {
            return true;
        }
        let Some(k) = key(id) else {
            return true;
        };
        if !self.seen.insert(k) {
            return false;
        }
        self.order.push_back((k, timestamp));
        while self.order.len() > self.max {
            self.forget_oldest();
        }
        true
    }

    fn forget_oldest(&mut self) {
        if let Some((k, _)) = self.order.pop_front() {
            self.seen.remove(&k);
        }
    }

    /// Forgets what the watermark has left behind the horizon (from the
    /// oldest taken: an old id taken late waits for its turn, within `max`).
    pub fn expire(&mut self, watermark: i64) {
        let cut = watermark.saturating_sub(self.horizon_ms);
        while self.order.front().is_some_and(|&(_, t)| t < cut) {
            self.forget_oldest();
        }
    }

    /// The ids for a checkpoint: a header, then 24 bytes per id.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAGIC.len() + self.order.len() * 24);
        out.extend_from_slice(MAGIC);
        for (k, t) in &self.order {
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&t.to_le_bytes());
        }
        out
    }

    /// Takes the ids of a checkpoint, replacing what it held.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let body = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or("not an event-id file (bad header)")?;
        if body.len() % 24 != 0 {
            return Err(format!(
                "{} bytes after the header is not a whole number of ids",
                body.len()
            ));
        }
        self.seen.clear();
        self.order.clear();
        for rec in body.chunks_exact(24) {
            let k = u128::from_le_bytes(rec[..16].try_into().expect("16 bytes"));
            let t = i64::from_le_bytes(rec[16..].try_into().expect("8 bytes"));
            if self.seen.insert(k) {
                self.order.push_back((k, t));
            }
        }
        while self.order.len() > self.max {
            self.forget_oldest();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_taken_once_within_the_horizon_and_the_cap() {
        let mut d = Dedupe::new(3, 1_000);
        assert!(d.first("a", 10));
        assert!(!d.first("a", 10));
        assert!(d.first("018f3c9e-8a1b-7c2d-9e4f-0123456789ab", 20));
        assert!(!d.first("018F3C9E-8A1B-7C2D-9E4F-0123456789AB", 20));
        assert!(d.first("b", 30));
        // Over the cap: the oldest taken ("a") is forgotten.
        assert!(d.first("c", 40));
        assert_eq!(d.len(), 3);
        assert!(d.first("a", 10));
        // Held: b (30), c (40), a (10). The horizon passes 35: b goes; c
        // stops the sweep and a, taken after it, waits its turn.
        d.expire(1_035);
        assert_eq!(d.len(), 2);
        assert!(d.first("b", 30));
        assert!(!d.first("c", 40));
    }

    #[test]
    fn the_ids_survive_a_snapshot_and_a_bad_file_is_named() {
        let mut d = Dedupe::new(10, 1_000);
        for (i, id) in ["x", "y", "z"].iter().enumerate() {
            d.first(id, i as i64);
        }
        let mut back = Dedupe::new(10, 1_000);
        back.restore(&d.snapshot()).unwrap();
        assert!(!back.first("y", 1));
        assert!(back.first("w", 3));
        assert!(back.restore(b"junk").unwrap_err().contains("bad header"));
        let mut cut = d.snapshot();
        cut.pop();
        assert!(back.restore(&cut).unwrap_err().contains("whole number"));
        assert!(Dedupe::new(0, 0).first("x", 0) && Dedupe::new(0, 0).first("x", 0));
    }

    #[test]
    fn ids_the_server_made_take_no_room() {
        let mut d = Dedupe::new(10, 1_000);
        let made = crate::event::server_event_id();
        assert!(d.first(&made, 0) && d.first(&made, 0), "never a duplicate");
        assert!(d.is_empty(), "not remembered");
        // A client's UUIDv7 (random tail) and v4 are remembered.
        let v7 = uuid::Uuid::now_v7().to_string();
        let v4 = "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab";
        assert!(d.first(&v7, 0) && !d.first(&v7, 0));
        assert!(d.first(v4, 0) && !d.first(v4, 0));
        assert_eq!(d.len(), 2);
    }
}
