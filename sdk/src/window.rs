//! Event-time windows, as in SEMANTICS.md: half-open `[start, end)`, aligned
//! to the Unix epoch plus an optional offset; sessions merge when they touch.
//!
//! [`WindowStore`] keeps per-window, per-key accumulators and applies the
//! watermark and allowed lateness the host hands over, so a plugin only says
//! how to add an event and what to emit.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A half-open time interval `[start, end)` in milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    pub fn contains(&self, ts: i64) -> bool {
        self.start <= ts && ts < self.end
    }
}

/// Start of the epoch-aligned window of `size` containing `ts`.
fn align(ts: i64, size: i64, offset: i64) -> i64 {
    ts - (ts - offset).rem_euclid(size)
}

/// Fixed-size, non-overlapping windows.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Tumbling {
    pub size: i64,
    #[serde(default)]
    pub offset: i64,
}

impl Tumbling {
    pub fn new(size_ms: i64) -> Self {
        assert!(size_ms > 0, "window size must be positive");
        Tumbling {
            size: size_ms,
            offset: 0,
        }
    }

    pub fn assign(&self, ts: i64) -> Window {
        let start = align(ts, self.size, self.offset);
        Window {
            start,
            end: start + self.size,
        }
    }
}

/// Windows of `size` starting every `slide`; each event lands in `size / slide` of them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Sliding {
    pub size: i64,
    pub slide: i64,
    #[serde(default)]
    pub offset: i64,
}

impl Sliding {
    pub fn new(size_ms: i64, slide_ms: i64) -> Self {
        assert!(
            size_ms > 0 && slide_ms > 0,
            "window size and slide must be positive"
        );
        Sliding {
            size: size_ms,
            slide: slide_ms,
            offset: 0,
        }
    }

    /// Every window containing `ts`, oldest first.
    pub fn assign(&self, ts: i64) -> impl Iterator<Item = Window> + use<> {
        let last_start = align(ts, self.slide, self.offset);
        let size = self.size;
        let slide = self.slide;
        let count = (size + slide - 1) / slide;
        (0..count).rev().filter_map(move |k| {
            let start = last_start - k * slide;
            let w = Window {
                start,
                end: start + size,
            };
            w.contains(ts).then_some(w)
        })
    }
}

/// Session windows of one key: each event opens `[ts, ts + gap)`; windows that
/// touch or overlap merge.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionWindows {
    /// Disjoint, sorted by start.
    windows: Vec<Window>,
}

/// The result of adding an event to [`SessionWindows`].
#[derive(Debug, Clone, PartialEq)]
pub struct SessionUpdate {
    /// The session the event belongs to now.
    pub window: Window,
    /// Sessions that were merged into `window` (and no longer exist).
    pub merged: Vec<Window>,
}

impl SessionWindows {
    pub fn add(&mut self, ts: i64, gap: i64) -> SessionUpdate {
        let mut window = Window {
            start: ts,
            end: ts + gap,
        };
        let mut merged = Vec::new();
        self.windows.retain(|w| {
            // Touching counts: [10,15) and [15,20) merge.
            if w.start <= window.end && window.start <= w.end {
                window.start = window.start.min(w.start);
                window.end = window.end.max(w.end);
                merged.push(*w);
                false
            } else {
                true
            }
        });
        let pos = self.windows.partition_point(|w| w.start < window.start);
        self.windows.insert(pos, window);
        SessionUpdate { window, merged }
    }

    /// Removes and returns sessions that ended at or before `watermark`.
    pub fn close(&mut self, watermark: i64) -> Vec<Window> {
        let split = self.windows.partition_point(|w| w.end <= watermark);
        self.windows.drain(..split).collect()
    }

    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Slot<A> {
    acc: A,
    /// Changed since it was last emitted.
    dirty: bool,
}

/// Per-window, per-key accumulators driven by the watermark.
///
/// - A window fires when the watermark reaches its end; every dirty key is emitted.
/// - Until `end + allowed_lateness` a late event still updates the window, which
///   is then emitted again with its full contents (the sink overwrites).
/// - After that the window is freed and [`WindowStore::get_mut`] returns `None`:
///   the caller reports the event as late.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize + Ord, A: Serialize",
    deserialize = "K: Deserialize<'de> + Ord, A: Deserialize<'de>"
))]
pub struct WindowStore<K, A> {
    // A list of pairs, not a map: JSON maps need string keys.
    #[serde(with = "window_map")]
    windows: BTreeMap<Window, BTreeMap<K, Slot<A>>>,
    watermark: i64,
    allowed_lateness: i64,
}

impl<K: Ord + Clone, A: Default> WindowStore<K, A> {
    pub fn new(allowed_lateness: i64) -> Self {
        WindowStore {
            windows: BTreeMap::new(),
            watermark: i64::MIN,
            allowed_lateness,
        }
    }

    /// The watermark of the last [`WindowStore::advance`].
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Whether `window` no longer accepts events.
    pub fn is_expired(&self, window: &Window) -> bool {
        window.end.saturating_add(self.allowed_lateness) <= self.watermark
    }

    /// The accumulator of `key` in `window`, created on first use; `None` if the
    /// window is past its allowed lateness.
    pub fn get_mut(&mut self, window: Window, key: &K) -> Option<&mut A> {
        if self.is_expired(&window) {
            return None;
        }
        let keys = self.windows.entry(window).or_default();
        if !keys.contains_key(key) {
            keys.insert(
                key.clone(),
                Slot {
                    acc: A::default(),
                    dirty: true,
                },
            );
        }
        let slot = keys.get_mut(key).expect("inserted above");
        slot.dirty = true;
        Some(&mut slot.acc)
    }

    /// Runs `f` on the accumulator of `key` in `window` (created on first
    /// use) and returns what it returns; `None` if the window is past its
    /// allowed lateness. [`WindowStore::get_mut`] with one lookup where the
    /// key is there already (the usual case, per event).
    pub fn update<R>(&mut self, window: Window, key: &K, f: impl FnOnce(&mut A) -> R) -> Option<R> {
        if self.is_expired(&window) {
            return None;
        }
        let keys = self.windows.entry(window).or_default();
        if let Some(slot) = keys.get_mut(key) {
            slot.dirty = true;
            return Some(f(&mut slot.acc));
        }
        let slot = keys.entry(key.clone()).or_insert(Slot {
            acc: A::default(),
            dirty: true,
        });
        Some(f(&mut slot.acc))
    }

    /// Moves event time to `watermark`: emits every fired window's changed keys
    /// (oldest window first, keys in order) and frees expired windows.
    pub fn advance(&mut self, watermark: i64, mut emit: impl FnMut(Window, &K, &A)) {
        self.watermark = self.watermark.max(watermark);
        let wm = self.watermark;
        for (window, keys) in self.windows.range_mut(..) {
            if window.end > wm {
                // Later windows may still end earlier (sliding sizes differ), keep scanning.
                continue;
            }
            for (key, slot) in keys.iter_mut().filter(|(_, s)| s.dirty) {
                emit(*window, key, &slot.acc);
                slot.dirty = false;
            }
        }
        let lateness = self.allowed_lateness;
        self.windows
            .retain(|w, _| w.end.saturating_add(lateness) > wm);
    }

    /// Emits the changed keys of the windows still open at event time `at`
    /// (early results: each is emitted again, in full, when it closes).
    pub fn emit_open(&mut self, at: i64, mut emit: impl FnMut(Window, &K, &A)) {
        for (window, keys) in self.windows.iter_mut().filter(|(w, _)| w.end > at) {
            for (key, slot) in keys.iter_mut().filter(|(_, s)| s.dirty) {
                emit(*window, key, &slot.acc);
                slot.dirty = false;
            }
        }
    }

    /// Takes the accumulator of `key` in `window` out of the store (e.g. when
    /// session windows merge).
    pub fn remove(&mut self, window: &Window, key: &K) -> Option<A> {
        let keys = self.windows.get_mut(window)?;
        let slot = keys.remove(key)?;
        if keys.is_empty() {
            self.windows.remove(window);
        }
        Some(slot.acc)
    }

    /// Open windows and their keys, for plugins that need to look across them.
    pub fn iter(&self) -> impl Iterator<Item = (&Window, &K, &A)> {
        self.windows
            .iter()
            .flat_map(|(w, keys)| keys.iter().map(move |(k, s)| (w, k, &s.acc)))
    }

    pub fn len(&self) -> usize {
        self.windows.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

/// Holds items until the watermark passes their event time, then releases
/// them oldest first (ties in arrival order), so logic that depends on order
/// (sequences, funnels) sees the same order whatever the arrival order within
/// the out-of-orderness bound. Serializes with the plugin's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "T: Serialize", deserialize = "T: Deserialize<'de>"))]
pub struct EventTimeBuffer<T> {
    /// Items by (event time, arrival number): a release takes only what it
    /// returns, whatever the size of the buffer. Serialized as a list of
    /// (event time, arrival number, item).
    #[serde(with = "buffer_items")]
    items: BTreeMap<(i64, u64), T>,
    arrivals: u64,
}

impl<T> Default for EventTimeBuffer<T> {
    fn default() -> Self {
        EventTimeBuffer {
            items: BTreeMap::new(),
            arrivals: 0,
        }
    }
}

impl<T> EventTimeBuffer<T> {
    /// Keeps only the items for which `keep` is true (e.g. those of the
    /// parts a new config kept).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.items.retain(|_, item| keep(item));
    }

    pub fn push(&mut self, ts: i64, item: T) {
        self.arrivals += 1;
        self.items.insert((ts, self.arrivals), item);
    }

    /// The event time of the oldest item.
    pub fn first_time(&self) -> Option<i64> {
        self.items.keys().next().map(|(ts, _)| *ts)
    }

    /// Removes and returns, in event-time order, every item at or before `watermark`.
    pub fn release(&mut self, watermark: i64) -> Vec<(i64, T)> {
        let mut ready = Vec::new();
        while let Some(first) = self.items.first_entry() {
            if first.key().0 > watermark {
                break;
            }
            let ((ts, _), item) = first.remove_entry();
            ready.push((ts, item));
        }
        ready
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

mod buffer_items {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(
        items: &BTreeMap<(i64, u64), T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(items.iter().map(|(&(ts, n), item)| (ts, n, item)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<BTreeMap<(i64, u64), T>, D::Error> {
        let items: Vec<(i64, u64, T)> = Vec::deserialize(d)?;
        Ok(items
            .into_iter()
            .map(|(ts, n, item)| ((ts, n), item))
            .collect())
    }
}

mod window_map {
    use super::*;
    use serde::{Deserializer, Serializer};

    type Map<K, A> = BTreeMap<Window, BTreeMap<K, Slot<A>>>;
    type Pairs<K, A> = Vec<(Window, Vec<(K, Slot<A>)>)>;

    pub fn serialize<S: Serializer, K: Serialize, A: Serialize>(
        map: &Map<K, A>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            map.iter()
                .map(|(w, keys)| (w, keys.iter().collect::<Vec<_>>())),
        )
    }

    pub fn deserialize<
        'de,
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        A: Deserialize<'de>,
    >(
        d: D,
    ) -> Result<Map<K, A>, D::Error> {
        let pairs: Pairs<K, A> = Vec::deserialize(d)?;
        Ok(pairs
            .into_iter()
            .map(|(w, keys)| (w, keys.into_iter().collect()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_is_half_open_and_epoch_aligned() {
        let t = Tumbling::new(60_000);
        assert_eq!(
            t.assign(60_000),
            Window {
                start: 60_000,
                end: 120_000
            }
        );
        assert_eq!(t.assign(119_999).start, 60_000);
        assert_eq!(t.assign(-1).start, -60_000);
        let shifted = Tumbling {
            size: 60_000,
            offset: 15_000,
        };
        assert_eq!(shifted.assign(70_000).start, 15_000);
    }

    #[test]
    fn sliding_puts_each_event_in_size_over_slide_windows() {
        let s = Sliding::new(10, 5);
        let ws: Vec<_> = s.assign(12).collect();
        assert_eq!(
            ws,
            vec![Window { start: 5, end: 15 }, Window { start: 10, end: 20 }]
        );
        let ws: Vec<_> = s.assign(10).collect();
        assert_eq!(
            ws,
            vec![Window { start: 5, end: 15 }, Window { start: 10, end: 20 }]
        );
    }

    #[test]
    fn sessions_merge_when_a_gap_is_bridged() {
        let mut s = SessionWindows::default();
        s.add(10, 5);
        s.add(12, 5);
        s.add(20, 5);
        assert_eq!(s.windows().len(), 2);
        let up = s.add(16, 5);
        assert_eq!(up.window, Window { start: 10, end: 25 });
        assert_eq!(up.merged.len(), 2);
        assert_eq!(s.windows(), &[Window { start: 10, end: 25 }]);
    }

    #[test]
    fn buffer_releases_in_event_time_order() {
        let mut b = EventTimeBuffer::default();
        for (ts, x) in [(5, 'a'), (3, 'b'), (9, 'c'), (3, 'd')] {
            b.push(ts, x);
        }
        // Snapshots keep the (event time, arrival, item) list form, in
        // whatever order they were written.
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(
            json,
            r#"{"items":[[3,2,"b"],[3,4,"d"],[5,1,"a"],[9,3,"c"]],"arrivals":4}"#
        );
        let arrival_order = r#"{"items":[[5,1,"a"],[3,2,"b"],[9,3,"c"],[3,4,"d"]],"arrivals":4}"#;
        let mut restored: EventTimeBuffer<char> = serde_json::from_str(arrival_order).unwrap();
        assert_eq!(b.release(5), vec![(3, 'b'), (3, 'd'), (5, 'a')]);
        assert_eq!(restored.release(5), vec![(3, 'b'), (3, 'd'), (5, 'a')]);
        assert_eq!(b.len(), 1);
        assert_eq!(b.release(100), vec![(9, 'c')]);
        restored.push(7, 'e');
        assert_eq!(restored.release(100), vec![(7, 'e'), (9, 'c')]);
    }

    #[test]
    fn store_fires_at_end_reemits_late_updates_and_expires() {
        let mut st: WindowStore<String, u32> = WindowStore::new(10);
        let w = Window { start: 0, end: 100 };
        *st.get_mut(w, &"a".into()).unwrap() += 1;
        let mut out = Vec::new();
        st.advance(99, |w, k, a| out.push((w.start, k.clone(), *a)));
        assert!(
            out.is_empty(),
            "fires only when the watermark reaches the end"
        );
        st.advance(100, |w, k, a| out.push((w.start, k.clone(), *a)));
        assert_eq!(out, vec![(0, "a".to_string(), 1)]);
        // Late but within lateness: updated and emitted again in full.
        *st.get_mut(w, &"a".into()).unwrap() += 1;
        st.advance(105, |w, k, a| out.push((w.start, k.clone(), *a)));
        assert_eq!(out.last(), Some(&(0, "a".to_string(), 2)));
        st.advance(110, |_, _, _| {});
        assert!(
            st.get_mut(w, &"a".into()).is_none(),
            "expired at end + lateness"
        );
        let json = serde_json::to_string(&st).unwrap();
        let back: WindowStore<String, u32> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.watermark(), 110);
    }

    /// `update` is `get_mut` with a closure: a new key starts from the
    /// default, an existing one is found and marked to emit again, and an
    /// expired window takes nothing.
    #[test]
    fn update_creates_finds_and_refuses_expired_windows() {
        let mut st: WindowStore<String, u32> = WindowStore::new(10);
        let w = Window { start: 0, end: 100 };
        let add = |st: &mut WindowStore<String, u32>, k: &str| {
            st.update(w, &k.to_string(), |a| {
                *a += 1;
                *a
            })
        };
        assert_eq!(add(&mut st, "a"), Some(1));
        assert_eq!(add(&mut st, "a"), Some(2));
        assert_eq!(add(&mut st, "b"), Some(1));
        let mut out = Vec::new();
        st.advance(100, |_, k, a| out.push((k.clone(), *a)));
        assert_eq!(out, [("a".to_string(), 2), ("b".to_string(), 1)]);
        assert_eq!(add(&mut st, "b"), Some(2), "late, within lateness");
        out.clear();
        st.advance(105, |_, k, a| out.push((k.clone(), *a)));
        assert_eq!(out, [("b".to_string(), 2)], "only the updated key again");
        st.advance(110, |_, _, _| {});
        assert_eq!(add(&mut st, "a"), None, "expired at end + lateness");
        assert!(st.is_empty());
    }
}
