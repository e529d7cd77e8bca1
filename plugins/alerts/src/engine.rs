//! Rule evaluation. Everything here is deterministic in event time: the same
//! events and watermarks give the same alerts, which is what makes replays
//! and restores safe.

use crate::config::{Aggregate, Config, Direction, Rule, RuleKind};
use nexuspipe_sdk::filter::{alert_fingerprint, field_ref, format_duration};
use nexuspipe_sdk::prelude::*;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

pub struct Alerts {
    config: Config,
    lateness: i64,
    state: State,
}

/// Everything that survives a restart or a new version.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// Event time up to which observations have been applied.
    frontier: Option<i64>,
    /// Observations waiting for the watermark.
    buffer: EventTimeBuffer<Obs>,
    /// Rule id -> key -> state. Keys are looked up on every observation, so a
    /// hash map (a B-tree of string keys was a fifth of the plugin's time in
    /// `memcmp`); nothing iterates it where order shows: alerts come out in
    /// rule order, then key order, because due keys are sorted first.
    rules: BTreeMap<String, FxHashMap<String, KeyState>>,
    /// Rule id -> the rule's definition (its config as written) when the
    /// state was built: a new config takes over a rule's state only when
    /// both are unchanged. Missing in states saved before rules had one.
    #[serde(default)]
    definitions: BTreeMap<String, String>,
    /// When each key next needs attention without new events. Derived from
    /// `rules`, so it is not saved; it is rebuilt after a restore.
    #[serde(skip)]
    timers: Timers,
}

/// A min-heap of wake-ups, so that advancing the watermark touches only the
/// keys that are due instead of scanning every key of every rule on each
/// call. Entries are lazy: a key's `scheduled` names its live entry, which is
/// never later than the key's real wake time; others are stale.
#[derive(Debug, Default)]
struct Timers {
    built: bool,
    heap: BinaryHeap<Wake>,
    pushed: u64,
}

#[derive(Debug)]
struct Wake {
    at: i64,
    /// Push order: ties on `at` never compare keys.
    seq: u64,
    rule: usize,
    key: String,
}

impl Ord for Wake {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap pops the greatest, we want the earliest.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl PartialOrd for Wake {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Wake {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Wake {}

impl Timers {
    /// Makes sure `key` is woken by `ks.wake(rule)` at the latest. The key is
    /// copied only when an entry is added.
    fn schedule(&mut self, ri: usize, rule: &Rule, key: impl Into<String>, ks: &mut KeyState) {
        let Some(at) = ks.wake(rule) else {
            return;
        };
        if ks.scheduled.is_none_or(|s| at < s) {
            ks.scheduled = Some(at);
            self.pushed += 1;
            self.heap.push(Wake {
                at,
                seq: self.pushed,
                rule: ri,
                key: key.into(),
            });
        }
    }
}

/// What one event means to one rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Obs {
    rule: String,
    key: String,
    /// A threshold match (with its value), a `first`, or a `then`.
    role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum Role {
    Count(f64),
    First,
    Then,
    FirstAndThen,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct KeyState {
    /// Threshold: matching events in the window (time, value) and their
    /// sum, compensated: the sum is `sum + sum_error` (see [`KeyState::add`]).
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    window: VecDeque<(i64, f64)>,
    #[serde(default)]
    sum: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    sum_error: f64,
    /// Threshold: the instant of the last events applied when more events
    /// at that instant may still come: the condition there is not decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    undecided: Option<i64>,
    /// Threshold: since when the condition holds, and the alert's start if it fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    holding_since: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    firing: Option<Firing>,
    /// Sequence: times of `first` events still inside `within`.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    firsts: VecDeque<i64>,
    /// Absence: start of the open wait for `then`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    open: Option<i64>,
    /// Start of the last alert that was sent (cooldown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_fired: Option<i64>,
    /// Anomaly: the key's windows not yet decided, by start: (events, sum).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    buckets: BTreeMap<i64, (u64, f64)>,
    /// Anomaly: the start of the key's oldest window not yet decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_window: Option<i64>,
    /// Anomaly: the values of the key's last `baseline` windows, oldest first.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    history: VecDeque<f64>,
    /// Anomaly: consecutive windows beyond the baseline (their start is
    /// `holding_since`), and consecutive windows without events.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    beyond: u32,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    quiet: u32,
    /// Wake time of this key's live entry in `Timers`.
    #[serde(skip)]
    scheduled: Option<i64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Firing {
    starts_at: i64,
    /// False when the cooldown suppressed it: then no `resolved` is sent either.
    sent: bool,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

impl KeyState {
    /// Adds `v` to the window's sum (`-v` when an event leaves).
    ///
    /// Neumaier's compensated summation: `sum_error` collects what each
    /// rounding of `sum` lost (the error of one float addition is a float,
    /// computed exactly here), so an amount added and later subtracted
    /// leaves no drift, and `total` is the exact sum of the window's amounts
    /// rounded once: exactly so while `sum_error` adds up without rounding,
    /// as it does for amounts of similar scale (prices, counts), else within
    /// about a last bit. Recomputing the sum when an event leaves would cost
    /// the window's length per event (thousands for a busy key over an
    /// hour), exact expansions a growing list per key; this is a few float
    /// operations and one more number per key, on a path run per event.
    fn add(&mut self, v: f64) {
        let t = self.sum + v;
        self.sum_error += if self.sum.abs() >= v.abs() {
            (self.sum - t) + v
        } else {
            (v - t) + self.sum
        };
        self.sum = t;
    }

    fn total(&self) -> f64 {
        self.sum + self.sum_error
    }

    fn is_idle(&self) -> bool {
        self.window.is_empty()
            && self.undecided.is_none()
            && self.firing.is_none()
            && self.firsts.is_empty()
            && self.open.is_none()
            && self.holding_since.is_none()
            && self.next_window.is_none()
    }

    /// The next event time at which this key changes without new events.
    fn deadline(&self, rule: &Rule) -> Option<i64> {
        match &rule.kind {
            RuleKind::Threshold { window, for_ms, .. } => {
                let expiry = self.window.front().map(|(t, _)| t + window);
                let pending = match (self.holding_since, self.firing) {
                    (Some(h), None) if *for_ms > 0 => Some(h + for_ms),
                    _ => None,
                };
                expiry
                    .into_iter()
                    .chain(pending)
                    .chain(self.undecided)
                    .min()
            }
            RuleKind::Sequence { within, .. } => self.firsts.front().map(|t| t + within),
            RuleKind::Absence { within, .. } => self.open.map(|s| s + within),
            RuleKind::Anomaly {
                window, lateness, ..
            } => self
                .next_window
                .map(|s| s.saturating_add(*window).saturating_add(*lateness)),
        }
    }

    /// When the key must be looked at again without new events: its next
    /// deadline, or, once idle, when it can be forgotten (after its cooldown).
    fn wake(&self, rule: &Rule) -> Option<i64> {
        self.deadline(rule).or_else(|| {
            self.is_idle()
                .then(|| self.last_fired.map_or(i64::MIN, |l| l + rule.cooldown))
        })
    }

    /// Idle keys are forgotten unless a cooldown still needs their last alert.
    fn can_forget(&self, rule: &Rule, wm: i64) -> bool {
        self.is_idle() && self.last_fired.is_none_or(|l| wm - l >= rule.cooldown)
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
    }
}

struct Emitter<'a> {
    rule: &'a Rule,
    key: &'a str,
    out: &'a mut Vec<Alert>,
}

/// An anomaly's baseline when it was decided: median and deviation.
#[derive(Clone, Copy)]
struct Baseline {
    median: f64,
    deviation: f64,
}

impl Emitter<'_> {
    fn emit(
        &mut self,
        status: AlertStatus,
        starts_at: i64,
        ends_at: Option<i64>,
        count: usize,
        value: f64,
    ) {
        self.emit_with(status, starts_at, ends_at, count, value, None);
    }

    fn emit_with(
        &mut self,
        status: AlertStatus,
        starts_at: i64,
        ends_at: Option<i64>,
        count: usize,
        value: f64,
        baseline: Option<Baseline>,
    ) {
        let window = match &self.rule.kind {
            RuleKind::Threshold { window, .. } | RuleKind::Anomaly { window, .. } => *window,
            RuleKind::Sequence { within, .. } | RuleKind::Absence { within, .. } => *within,
        };
        let mut summary = self
            .rule
            .summary
            .replace("{rule}", &self.rule.id)
            .replace("{key}", self.key)
            .replace("{count}", &count.to_string())
            .replace("{value}", &fmt_num(value))
            .replace("{window}", &format_duration(window));
        if let Some(b) = baseline {
            summary = summary
                .replace("{baseline}", &fmt_num(b.median))
                .replace("{deviation}", &fmt_num(b.deviation));
        }
        let mut labels: Vec<(String, String)> = vec![
            ("rule".into(), self.rule.id.clone()),
            ("key".into(), self.key.to_string()),
        ];
        labels.extend(self.rule.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.out.push(Alert {
            rule_id: self.rule.id.clone(),
            key: self.key.to_string(),
            status,
            severity: self.rule.severity,
            summary,
            labels,
            starts_at,
            ends_at,
            fingerprint: alert_fingerprint(&self.rule.id, self.key, starts_at),
        });
    }
}

/// How [`advance_key`] treats the instant `t` itself.
#[derive(Clone, Copy, PartialEq)]
enum At {
    /// `t` is final: whatever changes at `t` is decided now.
    Settle,
    /// An event at `t` follows: a threshold's events that leave the window
    /// at `t` leave, but whether the condition holds at `t` is decided with
    /// that event (and any other at `t`) in: the count at `t` is over
    /// `(t - window, t]`.
    EventFollows,
}

/// Moves one key of one rule to event time `t` (deadlines up to and including `t`).
fn advance_key(rule: &Rule, key: &str, ks: &mut KeyState, t: i64, at: At, out: &mut Vec<Alert>) {
    let mut em = Emitter { rule, key, out };
    match &rule.kind {
        RuleKind::Threshold {
            window,
            above,
            for_ms,
            ..
        } => {
            // The condition is decided at every instant the sum changes (an
            // event comes or leaves) and at `for`, in time order, once all
            // that changes at that instant is in: a negative amount that
            // leaves can raise the sum, and events at one instant count
            // together (+10 and -8 at once is +2, never +10).
            let decided = |instant: i64| instant < t || at == At::Settle;
            loop {
                // Events came in at `u`; nothing before `u` is left to decide
                // (they were applied after advancing to `u`, so what leaves
                // at `u` has left and what leaves later is after `u`).
                if let Some(u) = ks.undecided
                    && u <= t
                    && decided(u)
                {
                    ks.undecided = None;
                    decide(&mut em, ks, u, *above, *for_ms, rule.cooldown);
                    continue;
                }
                // A `for` that completes before the next expiry fires first;
                // one that completes as events leave is decided with them.
                if let (Some(h), None) = (ks.holding_since, ks.firing)
                    && h + for_ms <= t
                    && decided(h + for_ms)
                    && ks
                        .window
                        .front()
                        .is_none_or(|(ft, _)| h + for_ms < ft + window)
                {
                    fire_threshold(&mut em, ks, h, rule.cooldown);
                    continue;
                }
                let Some(&(ft, _)) = ks.window.front() else {
                    break;
                };
                let left_at = ft + window;
                if left_at > t {
                    break;
                }
                // Everything that leaves at this instant, then one decision.
                while let Some(&(ft, v)) = ks.window.front()
                    && ft + window == left_at
                {
                    ks.window.pop_front();
                    ks.add(-v);
                }
                if ks.window.is_empty() {
                    // An empty window sums to 0, whatever was left of the
                    // rounding: the next events start from a clean sum.
                    ks.sum = 0.0;
                    ks.sum_error = 0.0;
                }
                if decided(left_at) {
                    decide(&mut em, ks, left_at, *above, *for_ms, rule.cooldown);
                }
            }
        }
        RuleKind::Sequence { within, .. } => {
            while ks.firsts.front().is_some_and(|f| t - f >= *within) {
                ks.firsts.pop_front();
            }
        }
        RuleKind::Anomaly {
            window,
            lateness,
            baseline,
            ..
        } => {
            // Every window of the key closes, with or without events (an
            // empty one counts 0), once the watermark is `lateness` past it.
            while let Some(s) = ks.next_window
                && s.saturating_add(*window).saturating_add(*lateness) <= t
            {
                // The end of a bounded input (the final flush) is not
                // silence: windows after the key's last events stay open.
                if t == i64::MAX
                    && ks
                        .buckets
                        .last_key_value()
                        .is_none_or(|(&last, _)| s > last)
                {
                    *ks = KeyState {
                        last_fired: ks.last_fired,
                        ..KeyState::default()
                    };
                    break;
                }
                let (n, sum) = ks.buckets.remove(&s).unwrap_or((0, 0.0));
                ks.next_window = Some(s.saturating_add(*window));
                close_window(&mut em, ks, s, n, sum);
                // A key quiet for a whole baseline is forgotten (an alert
                // still open resolves), so keys do not pile up and a leap
                // of the watermark costs at most `baseline` windows a key.
                // Events of later windows not decided yet (allowed
                // lateness) stay: the key warms up again from the first.
                if ks.quiet as usize >= *baseline {
                    if let Some(f) = ks.firing.take()
                        && f.sent
                    {
                        let b = (!ks.history.is_empty()).then(|| baseline_of(ks, rule));
                        em.emit_with(
                            AlertStatus::Resolved,
                            f.starts_at,
                            Some(s.saturating_add(*window)),
                            0,
                            0.0,
                            b,
                        );
                    }
                    let buckets = std::mem::take(&mut ks.buckets);
                    *ks = KeyState {
                        last_fired: ks.last_fired,
                        next_window: buckets.keys().next().copied(),
                        buckets,
                        ..KeyState::default()
                    };
                    if ks.next_window.is_none() {
                        break;
                    }
                }
            }
        }
        RuleKind::Absence { within, .. } => {
            if let Some(s) = ks.open
                && s + within <= t
            {
                ks.open = None;
                if ks.last_fired.is_none_or(|l| s - l >= rule.cooldown) {
                    ks.last_fired = Some(s);
                    em.emit(AlertStatus::Firing, s, None, 1, 1.0);
                }
            }
        }
    }
}

/// The median and the median absolute deviation of `values`.
fn median_mad(values: &VecDeque<f64>) -> (f64, f64) {
    fn median(v: &mut [f64]) -> f64 {
        v.sort_unstable_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }
    let mut v: Vec<f64> = values.iter().copied().collect();
    let m = median(&mut v);
    for x in &mut v {
        *x = (*x - m).abs();
    }
    (m, median(&mut v))
}

/// The scale that makes a MAD estimate the standard deviation of normally
/// distributed values, so `k` reads as "standard deviations".
const MAD_TO_SIGMA: f64 = 1.4826;

/// The median of a key's baseline and its deviation (1.4826 × MAD, at least
/// the rule's `min_deviation`).
fn baseline_of(ks: &KeyState, rule: &Rule) -> Baseline {
    let min_deviation = match &rule.kind {
        RuleKind::Anomaly { min_deviation, .. } => *min_deviation,
        _ => 0.0,
    };
    let (median, mad) = median_mad(&ks.history);
    Baseline {
        median,
        deviation: (MAD_TO_SIGMA * mad).max(min_deviation),
    }
}

/// Decides an anomaly rule's window `[start, start + window)` that held `n`
/// events summing to `sum`: against the baseline of the windows before it,
/// then the window joins the baseline.
fn close_window(em: &mut Emitter<'_>, ks: &mut KeyState, start: i64, n: u64, sum: f64) {
    let RuleKind::Anomaly {
        aggregate,
        k,
        direction,
        baseline,
        for_windows,
        ..
    } = &em.rule.kind
    else {
        return;
    };
    ks.quiet = if n == 0 { ks.quiet + 1 } else { 0 };
    let value = match aggregate {
        Aggregate::Count => n as f64,
        Aggregate::Sum(_) => sum,
        // An average of nothing is no value: the window is skipped.
        Aggregate::Avg(_) if n == 0 => return,
        Aggregate::Avg(_) => sum / n as f64,
    };
    // Until the baseline is full (the warm-up), a window only joins it.
    let verdict = (ks.history.len() >= *baseline).then(|| {
        let b = baseline_of(ks, em.rule);
        let (median, deviation) = (b.median, b.deviation);
        let off = value - median;
        let beyond = match direction {
            Direction::Above => off > k * deviation,
            Direction::Below => -off > k * deviation,
            Direction::Both => off.abs() > k * deviation,
        };
        (beyond, b)
    });
    ks.history.push_back(value);
    if ks.history.len() > *baseline {
        ks.history.pop_front();
    }
    let cooldown = em.rule.cooldown;
    match verdict {
        Some((true, b)) => {
            ks.beyond += 1;
            let since = *ks.holding_since.get_or_insert(start);
            if ks.beyond >= *for_windows && ks.firing.is_none() {
                let sent = ks.last_fired.is_none_or(|l| since - l >= cooldown);
                ks.firing = Some(Firing {
                    starts_at: since,
                    sent,
                });
                if sent {
                    ks.last_fired = Some(since);
                    em.emit_with(AlertStatus::Firing, since, None, n as usize, value, Some(b));
                }
            }
        }
        within => {
            ks.beyond = 0;
            ks.holding_since = None;
            if let Some(f) = ks.firing.take()
                && f.sent
            {
                let b = within.map(|(_, b)| b);
                em.emit_with(
                    AlertStatus::Resolved,
                    f.starts_at,
                    Some(start),
                    n as usize,
                    value,
                    b,
                );
            }
        }
    }
}

/// Decides a threshold's condition at `instant`, when the sum changed there.
fn decide(
    em: &mut Emitter<'_>,
    ks: &mut KeyState,
    instant: i64,
    above: f64,
    for_ms: i64,
    cooldown: i64,
) {
    let sum = ks.total();
    if sum > above {
        let h = *ks.holding_since.get_or_insert(instant);
        if ks.firing.is_none() && instant - h >= for_ms {
            fire_threshold(em, ks, h, cooldown);
        }
    } else {
        ks.holding_since = None;
        if let Some(f) = ks.firing.take()
            && f.sent
        {
            em.emit(
                AlertStatus::Resolved,
                f.starts_at,
                Some(instant),
                ks.window.len(),
                sum,
            );
        }
    }
}

fn fire_threshold(em: &mut Emitter<'_>, ks: &mut KeyState, starts_at: i64, cooldown: i64) {
    let sent = ks.last_fired.is_none_or(|l| starts_at - l >= cooldown);
    ks.firing = Some(Firing { starts_at, sent });
    if sent {
        ks.last_fired = Some(starts_at);
        em.emit(
            AlertStatus::Firing,
            starts_at,
            None,
            ks.window.len(),
            ks.total(),
        );
    }
}

/// Applies one observation at its time (the key was advanced to it first).
fn apply(rule: &Rule, key: &str, ks: &mut KeyState, t: i64, role: Role, out: &mut Vec<Alert>) {
    let mut em = Emitter { rule, key, out };
    match (&rule.kind, role) {
        (RuleKind::Threshold { .. }, Role::Count(v)) => {
            ks.window.push_back((t, v));
            ks.add(v);
            // Decided once no more events can come at `t` (see `At`). A late
            // event behind an undecided instant is decided with it.
            ks.undecided = Some(ks.undecided.map_or(t, |u| u.max(t)));
        }
        (RuleKind::Anomaly { window, .. }, Role::Count(v)) => {
            let start = t.saturating_sub(t.rem_euclid(*window));
            let next = *ks.next_window.get_or_insert(start);
            // Never before the oldest open window: later ones were decided
            // (the host sends such an event to the late output first).
            if start >= next {
                let b = ks.buckets.entry(start).or_insert((0, 0.0));
                b.0 += 1;
                b.1 += v;
            }
        }
        (RuleKind::Sequence { count, .. }, role) => {
            if matches!(role, Role::Then | Role::FirstAndThen) && ks.firsts.len() >= *count {
                let start = *ks.firsts.front().expect("count >= 1");
                let n = ks.firsts.len();
                ks.firsts.clear();
                if ks.last_fired.is_none_or(|l| start - l >= rule.cooldown) {
                    ks.last_fired = Some(start);
                    em.emit(AlertStatus::Firing, start, None, n, n as f64);
                }
            }
            if matches!(role, Role::First | Role::FirstAndThen) {
                ks.firsts.push_back(t);
            }
        }
        (RuleKind::Absence { .. }, role) => {
            if matches!(role, Role::Then | Role::FirstAndThen) {
                ks.open = None;
            }
            if matches!(role, Role::First | Role::FirstAndThen) && ks.open.is_none() {
                // A repeated `first` does not restart the wait.
                ks.open = Some(t);
            }
        }
        _ => {}
    }
}

impl Alerts {
    /// What `event` means to `rule`, if anything.
    fn observe(rule: &Rule, e: &Event) -> Option<Role> {
        match &rule.kind {
            RuleKind::Threshold { filter, sum, .. } => {
                if !filter.matches(e) {
                    return None;
                }
                // A value that is not a finite number ("NaN", "inf" parse as
                // floats) is skipped like a missing one: it would poison the sum.
                let v = match sum {
                    Some(f) => field_ref(e, f)
                        .and_then(|v| v.as_f64())
                        .filter(|v| v.is_finite())?,
                    None => 1.0,
                };
                Some(Role::Count(v))
            }
            RuleKind::Anomaly {
                filter, aggregate, ..
            } => {
                if !filter.matches(e) {
                    return None;
                }
                let v = match aggregate {
                    Aggregate::Count => 1.0,
                    Aggregate::Sum(f) | Aggregate::Avg(f) => field_ref(e, f)
                        .and_then(|v| v.as_f64())
                        .filter(|v| v.is_finite())?,
                };
                Some(Role::Count(v))
            }
            RuleKind::Sequence { first, then, .. } | RuleKind::Absence { first, then, .. } => {
                match (first.matches(e), then.matches(e)) {
                    (true, true) => Some(Role::FirstAndThen),
                    (true, false) => Some(Role::First),
                    (false, true) => Some(Role::Then),
                    _ => None,
                }
            }
        }
    }

    /// Applies `o` at `ts`; [`Self::settle`] must follow, once every
    /// observation at `ts` that is known is applied.
    fn apply_now(&mut self, ts: i64, o: &Obs, out: &mut Vec<Alert>) {
        let Some(rule) = self.config.rules.iter().find(|r| r.id == o.rule) else {
            return;
        };
        let keys = match self.state.rules.get_mut(&o.rule) {
            Some(keys) => keys,
            None => self.state.rules.entry(o.rule.clone()).or_default(),
        };
        let ks = match keys.get_mut(&o.key) {
            Some(ks) => ks,
            None => keys.entry(o.key.clone()).or_default(),
        };
        advance_key(rule, &o.key, ks, ts, At::EventFollows, out);
        apply(rule, &o.key, ks, ts, o.role, out);
    }

    /// After [`Self::apply_now`]: decides what changed at `ts` if no more
    /// events can come at `ts` (`final_instant`; otherwise the key's timer
    /// does once the watermark passes `ts`), and schedules the key. Deciding
    /// here rather than by a timer keeps the heap out of the per-event path.
    fn settle(&mut self, ts: i64, o: &Obs, final_instant: bool, out: &mut Vec<Alert>) {
        let Some(ri) = self.config.rules.iter().position(|r| r.id == o.rule) else {
            return;
        };
        let rule = &self.config.rules[ri];
        let Some(ks) = self
            .state
            .rules
            .get_mut(&o.rule)
            .and_then(|keys| keys.get_mut(&o.key))
        else {
            return;
        };
        if final_instant && ks.undecided.is_some() {
            advance_key(rule, &o.key, ks, ts, At::Settle, out);
        } else if let RuleKind::Threshold {
            sum: None,
            above,
            for_ms,
            ..
        } = &rule.kind
            && ks.undecided == Some(ts)
            && ks.firing.is_none()
            && ks.total() > *above
        {
            // A count at `ts` only grows with more events at `ts` (what
            // leaves at `ts` has left): a firing decided now stands, and an
            // alert at the newest instant need not wait for the next
            // watermark. Whatever else `ts` decides still waits for it.
            let mut em = Emitter {
                rule,
                key: &o.key,
                out,
            };
            decide(&mut em, ks, ts, *above, *for_ms, rule.cooldown);
        }
        self.state.timers.schedule(ri, rule, o.key.as_str(), ks);
    }

    /// Schedules every key after a restore (or on the first call).
    fn build_timers(&mut self) {
        let timers = &mut self.state.timers;
        *timers = Timers {
            built: true,
            ..Timers::default()
        };
        for (ri, rule) in self.config.rules.iter().enumerate() {
            for (key, ks) in self.state.rules.get_mut(&rule.id).into_iter().flatten() {
                ks.scheduled = None;
                timers.schedule(ri, rule, key.as_str(), ks);
            }
        }
    }

    /// Fires every deadline up to `wm` and forgets keys with nothing left.
    /// Alerts come out in rule order, then key order.
    fn advance_all(&mut self, wm: i64, out: &mut Vec<Alert>) {
        let timers = &mut self.state.timers;
        let mut due: Vec<Vec<String>> = vec![Vec::new(); self.config.rules.len()];
        while timers.heap.peek().is_some_and(|w| w.at <= wm) {
            let w = timers.heap.pop().expect("peeked");
            due[w.rule].push(w.key);
        }
        for ((ri, rule), mut due) in self.config.rules.iter().enumerate().zip(due) {
            let Some(keys) = self.state.rules.get_mut(&rule.id) else {
                continue;
            };
            // A due key is one whose live entry was just popped.
            let is_due = |ks: &KeyState| ks.scheduled.is_some_and(|s| s <= wm);
            // A threshold is decided up to just before `wm`: an event at
            // exactly `wm` is not late (only older ones are) and counts at
            // `wm`, so what changes at `wm` waits for the next watermark
            // (its key stays scheduled). Absence and sequence deadlines at
            // `wm` do not depend on such an event (a `then` there is too late).
            let until = match rule.kind {
                RuleKind::Threshold { .. } => wm.saturating_sub(1),
                _ => wm,
            };
            let mut wake = |key: &str, ks: &mut KeyState| -> bool {
                ks.scheduled = None;
                if ks.deadline(rule).is_some_and(|d| d <= until) {
                    advance_key(rule, key, ks, until, At::Settle, out);
                }
                !ks.can_forget(rule, wm)
            };
            due.sort_unstable();
            due.dedup();
            for key in due {
                let Some(ks) = keys.get_mut(&key).filter(|ks| is_due(ks)) else {
                    continue; // stale entry, or the key is gone
                };
                if wake(&key, ks) {
                    timers.schedule(ri, rule, key, ks);
                } else {
                    keys.remove(&key);
                }
            }
        }
    }
}

impl Alerter for Alerts {
    type State = State;

    fn init(config: &str, settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
        let mut config = Config::parse(config)?;
        for rule in &mut config.rules {
            if let RuleKind::Anomaly { lateness, .. } = &mut rule.kind {
                *lateness = settings.allowed_lateness.max(0);
            }
        }
        let interest = config.interest();
        let state = State {
            definitions: config.definitions.clone(),
            ..State::default()
        };
        Ok((
            Alerts {
                config,
                lateness: settings.allowed_lateness,
                state,
            },
            interest,
        ))
    }

    /// Keeps the state of the rules whose id and definition are unchanged;
    /// a rule whose definition changed starts empty (its keys, pending
    /// timers and buffered events are dropped), a removed rule is dropped.
    fn restore(&mut self, mut saved: State) -> Restored {
        let mut report = Restored::default();
        let current = &self.config.definitions;
        let mut saved_ids: std::collections::BTreeSet<String> =
            saved.definitions.keys().cloned().collect();
        // Rules with keys in a state saved before rules had definitions.
        saved_ids.extend(saved.rules.keys().cloned());
        for id in &saved_ids {
            match (current.get(id), saved.definitions.get(id)) {
                (Some(now), Some(then)) if now == then => report.kept.push(id.clone()),
                (Some(_), _) => report.reset.push(id.clone()),
                (None, _) => report.dropped.push(id.clone()),
            }
        }
        report.added = current
            .keys()
            .filter(|id| !saved_ids.contains(*id))
            .cloned()
            .collect();
        let kept: std::collections::BTreeSet<&String> = report.kept.iter().collect();
        saved.rules.retain(|id, _| kept.contains(id));
        saved.buffer.retain(|o| kept.contains(&o.rule));
        saved.definitions = current.clone();
        saved.timers = Timers::default();
        self.state = saved;
        for (what, parts) in [
            ("kept", &report.kept),
            ("reset", &report.reset),
            ("dropped", &report.dropped),
        ] {
            if !parts.is_empty() {
                log(
                    Level::Info,
                    &format!("rule state {what}"),
                    &[("rules", &parts.join(","))],
                );
            }
        }
        report
    }

    fn process(&mut self, events: Vec<Event>, watermark: i64) -> AlertOutput {
        let mut alerts = Vec::new();
        let mut late = Vec::new();
        if !self.state.timers.built {
            self.build_timers();
        }
        let frontier = self.state.frontier.unwrap_or(i64::MIN);
        for (i, e) in events.iter().enumerate() {
            let relevant = self.config.rules.iter().filter_map(|rule| {
                let role = Self::observe(rule, e)?;
                Some((rule, e.field(&rule.key)?, role))
            });
            if e.timestamp < frontier.saturating_sub(self.lateness) {
                if relevant.count() > 0 {
                    late.push(i as u32);
                }
                continue;
            }
            let obs: Vec<Obs> = relevant
                .map(|(rule, key, role)| Obs {
                    rule: rule.id.clone(),
                    key: key.into_owned(),
                    role,
                })
                .collect();
            for o in obs {
                if e.timestamp < frontier {
                    // Late but within allowed lateness: applied as it comes.
                    self.apply_now(e.timestamp, &o, &mut alerts);
                    self.settle(e.timestamp, &o, true, &mut alerts);
                } else {
                    self.state.buffer.push(e.timestamp, o);
                }
            }
        }
        if watermark > frontier {
            // Apply what the watermark has passed, oldest first. Other keys'
            // deadlines before an event fire in advance_all; keys are
            // independent, so only the event's own key is moved first.
            // The events of one instant are applied together, then decided
            // unless more can come at that instant (it is the watermark).
            let ready = self.state.buffer.release(watermark);
            for instant in ready.chunk_by(|(a, _), (b, _)| a == b) {
                let ts = instant[0].0;
                for (_, o) in instant {
                    self.apply_now(ts, o, &mut alerts);
                }
                for (_, o) in instant {
                    self.settle(ts, o, ts < watermark, &mut alerts);
                }
            }
            self.advance_all(watermark, &mut alerts);
            self.state.frontier = Some(watermark);
        }
        AlertOutput { alerts, late }
    }

    fn state(&self) -> &State {
        &self.state
    }

    fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }
}
