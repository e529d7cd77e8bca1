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

use std::collections::VecDeque;
use std::hash::BuildHasher;

/// Ten minutes of event time beyond out-of-orderness and lateness.
pub const EXTRA_HORIZON_MS: i64 = 10 * 60_000;

const MAGIC: &[u8; 8] = b"NPIDS\x00\x00\x01";

pub struct Dedupe {
    seen: IdSet,
    /// Keys and their event times in the order taken, to forget the oldest first.
    order: VecDeque<(u128, i64)>,
    max: usize,
    horizon_ms: i64,
    /// The keys of the batch being taken (see [`Dedupe::retain_first`]).
    scratch: Vec<Option<u128>>,
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
            seen: IdSet::default(),
            order: VecDeque::new(),
            max,
            horizon_ms,
            scratch: Vec::new(),
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
        self.first_key(key(id), timestamp)
    }

    /// Keeps the items of `batch` taken for the first time (`id_of` gives
    /// an item's id and event time), in order; returns how many it dropped.
    /// The same as [`Dedupe::first`] on each, but the set's slots for the
    /// ids a few items ahead, and for the ids to be forgotten next, are
    /// fetched into the cache while the current one is looked up: the set
    /// outgrows the core's caches, and waiting for memory twice per event
    /// was most of the filter's time.
    pub fn retain_first<T>(
        &mut self,
        batch: &mut Vec<T>,
        id_of: impl Fn(&T) -> (&str, i64),
    ) -> usize {
        if self.max == 0 {
            return 0;
        }
        const AHEAD: usize = 8;
        let mut keys = std::mem::take(&mut self.scratch);
        keys.clear();
        keys.extend(batch.iter().map(|e| key(id_of(e).0)));
        for k in keys.iter().take(AHEAD).flatten() {
            self.seen.prefetch(*k);
        }
        let before = batch.len();
        let mut i = 0;
        batch.retain(|e| {
            if let Some(Some(k)) = keys.get(i + AHEAD) {
                self.seen.prefetch(*k);
            }
            if self.order.len() >= self.max
                && let Some(&(k, _)) = self.order.get(AHEAD)
            {
                self.seen.prefetch(k);
            }
            let first = self.first_key(keys[i], id_of(e).1);
            i += 1;
            first
        });
        self.scratch = keys;
        before - batch.len()
    }

    fn first_key(&mut self, k: Option<u128>, timestamp: i64) -> bool {
        let Some(k) = k else {
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
            self.seen.remove(k);
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
        self.seen = IdSet::default();
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

/// A set of 128-bit keys: open addressing with linear probing, at most
/// half full, so a lookup reads one cache line (rarely two) and its place
/// is known before it is made, which is what lets [`Dedupe::retain_first`]
/// fetch it ahead. (hashbrown reads a control byte and then the key, two
/// lines, and has no way to ask for them early.) Slots are placed by a
/// per-process seeded hash, as before: clients choose their ids.
struct IdSet {
    /// 0 marks an empty slot; the key 0 itself is `zero`.
    slots: Vec<u128>,
    len: usize,
    zero: bool,
    hasher: foldhash::fast::RandomState,
}

impl Default for IdSet {
    fn default() -> Self {
        IdSet {
            slots: vec![0; 16],
            len: 0,
            zero: false,
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl IdSet {
    fn home(&self, k: u128) -> usize {
        self.hasher.hash_one(k) as usize & (self.slots.len() - 1)
    }

    /// Asks for `k`'s slot to be brought into the cache; no effect on what
    /// the set holds.
    fn prefetch(&self, k: u128) {
        #[cfg(target_arch = "x86_64")]
        {
            let slot: *const u128 = &self.slots[self.home(k)];
            // SAFETY: a prefetch is a hint; it reads nothing and cannot
            // fault, and the address is of a live element besides.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    slot.cast::<i8>(),
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = k;
    }

    /// Adds `k`; false if it was there.
    fn insert(&mut self, k: u128) -> bool {
        if k == 0 {
            return !std::mem::replace(&mut self.zero, true);
        }
        if 2 * (self.len + 1) > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(k);
        loop {
            match self.slots[i] {
                0 => {
                    self.slots[i] = k;
                    self.len += 1;
                    return true;
                }
                x if x == k => return false,
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Removes `k` if it is there, moving back the keys after it in its run
    /// that would no longer be found (no tombstones, so runs stay short).
    fn remove(&mut self, k: u128) {
        if k == 0 {
            self.zero = false;
            return;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(k);
        loop {
            match self.slots[i] {
                0 => return,
                x if x == k => break,
                _ => i = (i + 1) & mask,
            }
        }
        self.len -= 1;
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let x = self.slots[j];
            if x == 0 {
                break;
            }
            // `x` may fill the hole if its home is not in (hole, j].
            let home = self.home(x);
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = x;
                hole = j;
            }
        }
        self.slots[hole] = 0;
    }

    fn grow(&mut self) {
        let n = self.slots.len() * 2;
        let old = std::mem::replace(&mut self.slots, vec![0; n]);
        self.len = 0;
        for k in old.into_iter().filter(|&k| k != 0) {
            self.insert(k);
        }
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

    /// The id set against std's `HashSet` over random inserts and removes
    /// in a small key space (long runs, wrap-around, growth, the key 0).
    #[test]
    fn the_id_set_holds_what_a_hash_set_holds() {
        let mut set = IdSet::default();
        let mut model = std::collections::HashSet::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for step in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = u128::from(x % 3_000);
            if x >> 60 < 10 {
                assert_eq!(set.insert(k), model.insert(k), "insert {k} at {step}");
            } else {
                set.remove(k);
                model.remove(&k);
            }
            if step % 997 == 0 {
                for probe in 0..3_000u128 {
                    let held = !set.insert(probe);
                    if !held {
                        set.remove(probe);
                    }
                    assert_eq!(held, model.contains(&probe), "{probe} at {step}");
                }
            }
        }
        assert_eq!(set.len + usize::from(set.zero), model.len());
    }

    /// Taking a batch at once keeps and drops what taking its events one by
    /// one does, across the cap.
    #[test]
    fn a_batch_is_taken_as_its_events_one_by_one() {
        let (mut one, mut all) = (Dedupe::new(50, 1_000), Dedupe::new(50, 1_000));
        let mut x: u64 = 7;
        for round in 0..200 {
            let batch: Vec<(String, i64)> = (0..40)
                .map(|i| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (format!("id-{}", (x >> 33) % 120), round * 40 + i)
                })
                .collect();
            let kept_one: Vec<_> = batch
                .iter()
                .filter(|(id, t)| one.first(id, *t))
                .cloned()
                .collect();
            let mut kept_all = batch.clone();
            let dropped = all.retain_first(&mut kept_all, |(id, t)| (id, *t));
            assert_eq!(kept_all, kept_one, "round {round}");
            assert_eq!(dropped, batch.len() - kept_one.len());
            assert!(
                dropped > 0 && dropped < batch.len(),
                "round {round} has both"
            );
        }
        assert_eq!(one.snapshot(), all.snapshot());
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
