//! Conversion funnels, as SEMANTICS.md describes: per user, the first step-1
//! event opens a conversion window of `within`; later steps count when they
//! come in order inside it (other events may come between); a repeated
//! step-1 event does not restart it. Results are unique users per step,
//! reported per tumbling window of the step-1 time.
//!
//! Steps are applied in event-time order (buffered until the watermark), so
//! out-of-order arrival within the bound does not change the outcome.

use crate::config::Funnel;
use crate::hll::Distinct;
use nexuspipe_sdk::prelude::*;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct FunnelState {
    /// (user, steps the event matches as a bit mask), until the watermark passes.
    buffer: EventTimeBuffer<(String, u64)>,
    frontier: Option<i64>,
    /// Users with a conversion window (looked up per step event; the order
    /// never shows, so a hash map). A window that ended before `frontier`
    /// counts as absent; such entries are swept out now and then.
    users: FxHashMap<String, Progress>,
    /// Report window start -> users per step.
    windows: BTreeMap<i64, Counts>,
    /// Event time of the next sweep of `users`. Not saved: a restored state
    /// sweeps on its first advance.
    #[serde(skip)]
    next_sweep: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Progress {
    start: i64,
    window: i64,
    reached: usize,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Counts {
    steps: Vec<Distinct>,
    dirty: bool,
}

fn mask(f: &Funnel, e: &Event) -> u64 {
    f.steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.filter.matches(e))
        .fold(0, |m, (i, _)| m | (1 << i))
}

impl FunnelState {
    /// Takes the batch's step events; returns the indexes of events that came too late.
    pub fn add(&mut self, f: &Funnel, events: &[Event], lateness: i64, late: &mut Vec<u32>) {
        let frontier = self.frontier.unwrap_or(i64::MIN);
        for (i, e) in events.iter().enumerate() {
            let m = mask(f, e);
            if m == 0 {
                continue;
            }
            let Some(user) = e.field(&f.user) else {
                continue;
            };
            if e.timestamp < frontier.saturating_sub(lateness) {
                late.push(i as u32);
                continue;
            }
            if e.timestamp < frontier {
                self.apply(f, e.timestamp, &user, m);
            } else {
                self.buffer.push(e.timestamp, (user.into_owned(), m));
            }
        }
    }

    fn apply(&mut self, f: &Funnel, ts: i64, user: &str, m: u64) {
        let steps = f.steps.len();
        let opens = m & 1 != 0;
        let fresh = |ts| Progress {
            start: ts,
            window: Tumbling::new(f.window).assign(ts).start,
            reached: 1,
        };
        // One lookup for the common case: a user already in the funnel.
        let frontier = self.frontier;
        let open = |p: &&mut Progress| frontier.is_none_or(|fr| p.start + f.within > fr);
        let Some(p) = self.users.get_mut(user).filter(open) else {
            if opens {
                let p = fresh(ts);
                let window = p.window;
                self.users.insert(user.to_string(), p);
                self.count(window, 0, user, steps);
            }
            return;
        };
        if ts - p.start < f.within {
            if p.reached < steps && m & (1 << p.reached) != 0 {
                let (window, step) = (p.window, p.reached);
                p.reached += 1;
                self.count(window, step, user, steps);
            }
        } else if opens {
            // The conversion window expired: a step-1 event opens a new one.
            *p = fresh(ts);
            let window = p.window;
            self.count(window, 0, user, steps);
        } else {
            self.users.remove(user);
        }
    }

    fn count(&mut self, window: i64, step: usize, user: &str, steps: usize) {
        let c = self.windows.entry(window).or_default();
        if c.steps.len() < steps {
            c.steps.resize_with(steps, Distinct::default);
        }
        c.steps[step].insert(user);
        c.dirty = true;
    }

    /// Applies what the watermark passed, expires conversion windows, and
    /// emits report windows: first when the window ends, again as late
    /// conversions come in, last when no conversion can join any more.
    pub fn advance(
        &mut self,
        f: &Funnel,
        watermark: i64,
        lateness: i64,
        points: &mut Vec<MetricPoint>,
    ) {
        if self.frontier.is_some_and(|fr| watermark <= fr) {
            return;
        }
        for (ts, (user, m)) in self.buffer.release(watermark) {
            self.apply(f, ts, &user, m);
        }
        // Expired users already count as absent; removing them only bounds
        // memory. Scanning every user on every call cost more than the
        // events did, so sweep once per quarter of `within` of event time.
        if self.next_sweep.is_none_or(|s| watermark >= s) {
            self.users.retain(|_, p| p.start + f.within > watermark);
            self.next_sweep = Some(watermark.saturating_add((f.within / 4).max(1)));
        }
        let final_at = |w: i64| w + f.window + f.within + lateness;
        for (&w, c) in self.windows.iter_mut() {
            if w + f.window <= watermark && c.dirty {
                emit(f, w, c, points);
                c.dirty = false;
            }
        }
        self.windows.retain(|&w, _| final_at(w) > watermark);
        self.frontier = Some(watermark);
    }
}

fn emit(f: &Funnel, window: i64, c: &Counts, points: &mut Vec<MetricPoint>) {
    let users: Vec<i64> = c.steps.iter().map(|d| d.count() as i64).collect();
    let first = users.first().copied().unwrap_or(0);
    for (i, step) in f.steps.iter().enumerate() {
        let n = users.get(i).copied().unwrap_or(0);
        let prev = if i == 0 { n } else { users[i - 1] };
        let ratio = |a: i64, b: i64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
        points.push(
            MetricPoint::new("funnel", window)
                .tag("funnel", f.name.clone())
                .tag("step", (i + 1).to_string())
                .tag("step_name", step.name.clone())
                .field("users", n)
                .field("conversion", ratio(n, first))
                .field("step_conversion", ratio(n, prev)),
        );
    }
}
