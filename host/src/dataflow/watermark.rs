//! Bounded out-of-orderness watermarks: `max event time seen - bound`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The watermark of one input.
#[derive(Debug, Clone)]
pub struct Watermark {
    bound: i64,
    max_ts: i64,
    /// Never moves backwards, whatever the events or the idle advance did.
    current: i64,
}

impl Watermark {
    pub fn new(out_of_orderness_ms: i64) -> Self {
        Watermark {
            bound: out_of_orderness_ms,
            max_ts: i64::MIN,
            current: i64::MIN,
        }
    }

    /// Notes an event's time; returns the (possibly advanced) watermark.
    pub fn observe(&mut self, ts: i64) -> i64 {
        if ts > self.max_ts {
            self.max_ts = ts;
            self.current = self.current.max(ts.saturating_sub(self.bound));
        }
        self.current
    }

    /// Moves the watermark forward to at least `to` (idle advance, final flush).
    pub fn advance_to(&mut self, to: i64) -> i64 {
        self.current = self.current.max(to);
        self.current
    }

    /// The one input quiet for `quiet_for`: once that is `idle` or more,
    /// event time advances with processing time (see [`idle_time`]).
    /// Returns the watermark.
    pub fn idle_advance(&mut self, quiet_for: Duration, idle: Duration) -> i64 {
        if quiet_for >= idle && self.max_ts != i64::MIN {
            self.advance_to(idle_time(self.max_ts, self.bound, quiet_for));
        }
        self.current
    }

    pub fn current(&self) -> i64 {
        self.current
    }

    pub fn max_event_time(&self) -> i64 {
        self.max_ts
    }
}

/// Event time on a quiet stream, for one input or many: the highest event
/// time seen, minus the bound, plus the time since the last event (so a
/// window closes `idle_timeout` after it would have with traffic, and
/// absence rules fire).
pub fn idle_time(max: i64, bound: i64, quiet_for: Duration) -> i64 {
    max.saturating_sub(bound)
        .saturating_add(quiet_for.as_millis() as i64)
}

/// Event-time progress that a batch of `T` is cut against (see [`split_at_late`]).
pub trait Clock<T> {
    fn current(&self) -> i64;
    /// Notes an item's time.
    fn observe(&mut self, item: &T);
    fn time(item: &T) -> i64;
    /// Whether the item counts towards a batch's size (a marker does not).
    fn counts(_item: &T) -> bool {
        true
    }
}

impl Clock<crate::runtime::Event> for Watermark {
    fn current(&self) -> i64 {
        self.current
    }
    fn observe(&mut self, e: &crate::runtime::Event) {
        Watermark::observe(self, e.timestamp);
    }
    fn time(e: &crate::runtime::Event) -> i64 {
        e.timestamp
    }
}

/// Splits a batch so that every event meets the watermark of all events before
/// it, as if the watermark advanced per event: a cut goes before each event
/// older than the running watermark (a late event), when the watermark moved
/// since the last cut. In-order traffic is not cut; lateness decisions and
/// window contents then do not depend on how requests were batched.
/// Returns the sub-batches with the watermark to pass along each.
pub fn split_at_late<T, C: Clock<T>>(mut events: Vec<T>, wm: &mut C) -> Vec<(Vec<T>, i64)> {
    // Find the cuts by reference first: in-order traffic then moves no event.
    // A cut is (where the next part starts, the watermark of the part it ends).
    let mut cuts: Vec<(usize, i64)> = Vec::new();
    let mut passed = wm.current();
    for (i, e) in events.iter().enumerate() {
        if C::time(e) < wm.current() && wm.current() > passed && i > 0 {
            passed = wm.current();
            cuts.push((i, passed));
        }
        wm.observe(e);
    }
    if events.is_empty() {
        return Vec::new();
    }
    // From the back, so each split moves only its own part.
    let mut tails: Vec<Vec<T>> = cuts
        .iter()
        .rev()
        .map(|&(at, _)| events.split_off(at))
        .collect();
    tails.reverse();
    let marks = cuts.iter().map(|&(_, m)| m).chain([wm.current()]);
    std::iter::once(events).chain(tails).zip(marks).collect()
}

/// Items regrouped into batches of `size` counted items (see
/// [`Clock::counts`]), each cut further where a late item needs it (see
/// [`split_at_late`]), with the watermark to pass along each: how both
/// drivers batch what goes into the plugins. `expected`: how many items
/// will come, so each batch is allocated once.
pub fn batches<T, C: Clock<T>>(
    items: impl IntoIterator<Item = T>,
    expected: usize,
    size: usize,
    wm: &mut C,
) -> Vec<(Vec<T>, i64)> {
    let size = size.max(1);
    let mut out = Vec::new();
    let mut left = expected;
    let mut batch: Vec<T> = Vec::new();
    let mut counted = 0;
    for item in items {
        if batch.is_empty() {
            batch.reserve_exact(size.min(left.max(1)));
        }
        counted += usize::from(C::counts(&item));
        batch.push(item);
        left = left.saturating_sub(1);
        if counted == size {
            out.extend(split_at_late(std::mem::take(&mut batch), wm));
            counted = 0;
        }
    }
    if !batch.is_empty() {
        out.extend(split_at_late(batch, wm));
    }
    out
}

/// Event time over several source partitions (the minimum over the
/// inputs, leaving out idle inputs). Whether a source partition is
/// idle is said by its owner (an idle marker), never guessed here: while a
/// partition changes hands after a crash, it holds event time back, so its
/// replayed events are not late.
pub struct Inputs {
    bound: i64,
    idle: Duration,
    /// Source partition -> highest event time, and whether it is idle.
    pub inputs: BTreeMap<i32, (i64, bool)>,
    pub current: i64,
    /// Every input idle since then: event time advances with processing time.
    all_idle_since: Option<Instant>,
}

impl Inputs {
    pub fn new(bound: i64, idle: Duration, sources: i32) -> Self {
        Inputs {
            bound,
            idle,
            // A partition that has not delivered yet holds event time back
            // until it does or its owner says it is idle.
            inputs: (0..sources).map(|s| (s, (i64::MIN, false))).collect(),
            current: i64::MIN,
            all_idle_since: None,
        }
    }

    pub fn refresh(&mut self) -> i64 {
        let active = self
            .inputs
            .values()
            .filter(|(_, idle)| !idle)
            .map(|(max, _)| *max)
            .min();
        if let Some(m) = active
            && m != i64::MIN
        {
            self.current = self.current.max(m.saturating_sub(self.bound));
        }
        self.current
    }

    /// Every input idle: event time advances with processing time from the
    /// highest time seen, as on one host (see [`idle_time`]).
    pub fn idle_advance(&mut self, now: Instant) -> i64 {
        let max = self
            .inputs
            .values()
            .map(|(m, _)| *m)
            .max()
            .unwrap_or(i64::MIN);
        if let Some(since) = self.all_idle_since
            && max != i64::MIN
        {
            let quiet_for = self.idle + now.duration_since(since);
            self.current = self.current.max(idle_time(max, self.bound, quiet_for));
        }
        self.current
    }

    /// Source partition `source` reached event time `ts` (`None`: its owner
    /// says it is idle).
    pub fn observe_source(&mut self, source: i32, ts: Option<i64>) {
        let entry = self.inputs.entry(source).or_insert((i64::MIN, false));
        match ts {
            Some(ts) => {
                entry.0 = entry.0.max(ts);
                entry.1 = false;
                self.all_idle_since = None;
            }
            None => {
                entry.1 = true;
                if self.all_idle_since.is_none() && self.inputs.values().all(|(_, idle)| *idle) {
                    self.all_idle_since = Some(Instant::now());
                }
            }
        }
        self.refresh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: i64) -> crate::runtime::Event {
        crate::runtime::Event {
            id: String::new(),
            event_type: "x".into(),
            timestamp: ts,
            user_id: None,
            session_id: None,
            properties: Vec::new(),
            metadata: crate::runtime::Metadata {
                ip_address: None,
                user_agent: None,
                platform: None,
                url: None,
                referrer: None,
            },
        }
    }

    #[test]
    fn cuts_only_before_late_events() {
        let mut w = Watermark::new(5);
        let parts = split_at_late(vec![ev(10), ev(12), ev(8), ev(30), ev(20), ev(21)], &mut w);
        let shape: Vec<(Vec<i64>, i64)> = parts
            .iter()
            .map(|(b, wm)| (b.iter().map(|e| e.timestamp).collect(), *wm))
            .collect();
        // 8 is within the bound (wm 7); 20 is late (wm 25): a cut before it, 21 rides along.
        assert_eq!(shape, vec![(vec![10, 12, 8, 30], 25), (vec![20, 21], 25)]);
    }

    #[test]
    fn batches_are_of_the_size_asked_and_cut_before_late_events() {
        let mut w = Watermark::new(5);
        let times = [10, 12, 8, 30, 20, 21, 40];
        let parts = batches(times.map(ev), times.len(), 3, &mut w);
        let shape: Vec<(Vec<i64>, i64)> = parts
            .iter()
            .map(|(b, wm)| (b.iter().map(|e| e.timestamp).collect(), *wm))
            .collect();
        // By hand: [10 12 8] (wm 7), then [30 20 21] cut before 20 (late
        // against 25), then [40] (wm 35).
        assert_eq!(
            shape,
            vec![
                (vec![10, 12, 8], 7),
                (vec![30], 25),
                (vec![20, 21], 25),
                (vec![40], 35)
            ]
        );
    }

    #[test]
    fn trails_max_time_and_never_regresses() {
        let mut w = Watermark::new(5_000);
        assert_eq!(w.observe(10_000), 5_000);
        assert_eq!(w.observe(8_000), 5_000);
        assert_eq!(w.advance_to(20_000), 20_000);
        assert_eq!(w.observe(21_000), 20_000);
        assert_eq!(w.observe(30_000), 25_000);
    }

    /// Quiet for 3 s with a 2 s idle timeout and a 5 s bound, after events
    /// up to 60 s: by hand, 60 - 5 + 3 = 58 s, whether one input or two
    /// (both said idle 1 s ago, having been quiet 2 s before that).
    #[test]
    fn a_quiet_stream_advances_alike_on_one_input_and_many() {
        let (idle, bound) = (Duration::from_secs(2), 5_000);
        let mut one = Watermark::new(bound);
        one.observe(60_000);
        assert_eq!(
            one.idle_advance(Duration::from_secs(1), idle),
            55_000,
            "not idle yet"
        );
        assert_eq!(one.idle_advance(Duration::from_secs(3), idle), 58_000);
        let mut many = Inputs::new(bound, idle, 2);
        many.observe_source(0, Some(60_000));
        many.observe_source(1, Some(41_000));
        many.observe_source(0, None);
        many.observe_source(1, None);
        let said = Instant::now();
        let at = said + Duration::from_secs(1);
        // All idle since a hair before `said`: 58 s, or a few ms past.
        let wm = many.idle_advance(at);
        assert!((58_000..58_010).contains(&wm), "{wm}");
    }
}
