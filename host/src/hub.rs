//! Live push: what the engine produces, fanned out to WebSocket and SSE
//! clients (`/v1/stream`): points of the measurements a client names,
//! alerts, a sample of the live events, and engine figures once a second.
//!
//! The engine never waits for a client. It hands each round's points and
//! alerts to the hub's thread, which serializes each message once and
//! appends a round's messages to the queue of every client that asked for
//! them, with one wake-up. A client's queue is bounded: when a round does not
//! fit, the oldest messages of earlier rounds are dropped and the client is
//! told how many (a `dropped` message), like a lagging consumer; a round is
//! never cut by itself, so a client that keeps up takes a burst whole. A
//! client's connection writes what waits with a flush per 64 KiB: with a
//! thousand clients the cost is in wake-ups and syscalls, not in the bytes.
//! The event sample is taken at the end of the pipeline, at most
//! `sample_rate` events a second spread evenly over the stream.

use crate::config::StreamConfig;
use crate::runtime::{Event, MetricPoint};
use crate::telemetry::Metrics;
use bytes::Bytes;
use serde_json::{Value as Json, json};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a client asked for.
#[derive(Debug, Default, Clone)]
pub struct Subscription {
    pub measurements: HashSet<String>,
    pub alerts: bool,
    pub events: bool,
    pub stats: bool,
}

impl Subscription {
    /// From names: `alerts`, `events`, `stats`, anything else a measurement;
    /// `metric:<name>` is always a measurement (the default `events` one).
    pub fn of<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Self {
        let mut s = Subscription::default();
        for n in names {
            match n.as_ref().trim() {
                "" => {}
                "alerts" => s.alerts = true,
                "events" => s.events = true,
                "stats" => s.stats = true,
                m if m.starts_with("metric:") => {
                    s.measurements.insert(m["metric:".len()..].to_string());
                }
                m => {
                    s.measurements.insert(m.to_string());
                }
            }
        }
        s
    }
}

/// One connected client: its subscription and its queue of messages.
pub struct Client {
    subscription: Mutex<Subscription>,
    queue: Mutex<VecDeque<Bytes>>,
    /// Messages dropped since the client last read.
    dropped: AtomicU64,
    pub wake: tokio::sync::Notify,
    capacity: usize,
}

impl Client {
    /// Appends a round's messages for this client and wakes it once. The
    /// queue holds `capacity` messages, but a round is never cut by itself:
    /// to make room, only what earlier rounds left unread is dropped, so a
    /// client that had caught up always takes a burst (a round that closes
    /// many windows) whole.
    fn push(&self, msgs: &[&Bytes]) {
        if msgs.is_empty() {
            return;
        }
        let mut q = self.queue.lock().expect("client queue lock");
        let excess = (q.len() + msgs.len()).saturating_sub(self.capacity);
        let drop_n = excess.min(q.len());
        if drop_n > 0 {
            q.drain(..drop_n);
            self.dropped.fetch_add(drop_n as u64, Ordering::Relaxed);
        }
        q.extend(msgs.iter().map(|m| (*m).clone()));
        drop(q);
        self.wake.notify_one();
    }

    /// What is waiting, up to about `max_bytes`, led by a `dropped` message
    /// if some were. The rest stays in the bounded queue (where a client that
    /// falls further behind loses its oldest), and the client is woken again
    /// for it. Each message is valid UTF-8 JSON (serialized by the hub).
    pub fn take(&self, out: &mut Vec<Bytes>, max_bytes: usize) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            out.push(Bytes::from(
                json!({"type": "dropped", "count": dropped}).to_string(),
            ));
        }
        let mut q = self.queue.lock().expect("client queue lock");
        let mut bytes = 0;
        while bytes < max_bytes {
            let Some(m) = q.pop_front() else { break };
            bytes += m.len();
            out.push(m);
        }
        if !q.is_empty() {
            self.wake.notify_one();
        }
    }

    pub fn subscribe(&self, s: Subscription) {
        *self.subscription.lock().expect("subscription lock") = s;
    }

    fn wants(&self, f: impl Fn(&Subscription) -> bool) -> bool {
        f(&self.subscription.lock().expect("subscription lock"))
    }
}

enum Published {
    Points(Vec<MetricPoint>),
    Alerts(Vec<Arc<Json>>),
    Events(Vec<Json>),
}

/// The hub: clients, and the engine's way in.
pub struct Hub {
    clients: Mutex<Vec<Arc<Client>>>,
    tx: SyncSender<Published>,
    pub settings: StreamConfig,
    /// Whether any client wants the event sample (the engine skips it otherwise).
    wants_events: AtomicBool,
}

/// Rounds of outputs waiting for the hub's thread.
const QUEUE: usize = 1024;
/// Engine rounds fanned out together at most.
const ROUND: usize = 16;

impl Hub {
    pub fn start(settings: StreamConfig, metrics: Arc<Metrics>) -> std::io::Result<Arc<Hub>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let hub = Arc::new(Hub {
            clients: Mutex::new(Vec::new()),
            tx,
            settings,
            wants_events: AtomicBool::new(false),
        });
        let h = hub.clone();
        std::thread::Builder::new()
            .name("nexuspipe-hub".into())
            .spawn(move || run(h, rx, metrics))?;
        Ok(hub)
    }

    /// Registers a client; `None` when `max_clients` are connected.
    pub fn connect(&self, s: Subscription) -> Option<Arc<Client>> {
        let mut clients = self.clients.lock().expect("clients lock");
        if clients.len() >= self.settings.max_clients {
            return None;
        }
        let c = Arc::new(Client {
            subscription: Mutex::new(s),
            queue: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            capacity: self.settings.client_queue.max(1),
        });
        clients.push(c.clone());
        drop(clients);
        self.refresh();
        Some(c)
    }

    pub fn disconnect(&self, c: &Arc<Client>) {
        self.clients
            .lock()
            .expect("clients lock")
            .retain(|x| !Arc::ptr_eq(x, c));
        self.refresh();
    }

    /// Call after a client's subscription changed.
    pub fn refresh(&self) {
        let any = self
            .clients
            .lock()
            .expect("clients lock")
            .iter()
            .any(|c| c.wants(|s| s.events));
        self.wants_events.store(any, Ordering::Relaxed);
    }

    pub fn clients(&self) -> usize {
        self.clients.lock().expect("clients lock").len()
    }

    pub fn wants_events(&self) -> bool {
        self.wants_events.load(Ordering::Relaxed)
    }

    fn send(&self, p: Published) {
        if self.clients() == 0 {
            return;
        }
        // The hub's thread only copies into client queues (which drop their
        // oldest when full), so it keeps up: a client never holds it, nor
        // the engine, back.
        let _ = self.tx.send(p);
    }

    /// A round's points and alerts (from the engine's outputs).
    pub fn publish(&self, points: &[MetricPoint], alerts: &[Arc<Json>]) {
        if !points.is_empty() {
            self.send(Published::Points(points.to_vec()));
        }
        if !alerts.is_empty() {
            self.send(Published::Alerts(alerts.to_vec()));
        }
    }

    /// Sampled events (from the end of the pipeline).
    pub fn publish_events(&self, events: Vec<Json>) {
        if !events.is_empty() {
            self.send(Published::Events(events));
        }
    }

    /// Gives every client the messages of a round it wants, in order, with
    /// one push and one wake-up per client: with a thousand clients the cost
    /// is in lock round-trips and wake-ups, so they are paid once a round.
    fn fan_out(&self, msgs: &[(Bytes, Topic<'_>)]) {
        if msgs.is_empty() {
            return;
        }
        let clients = self.clients.lock().expect("clients lock");
        let mut mine: Vec<&Bytes> = Vec::with_capacity(msgs.len());
        for c in clients.iter() {
            mine.clear();
            {
                let s = c.subscription.lock().expect("subscription lock");
                mine.extend(msgs.iter().filter(|(_, t)| t.wanted_by(&s)).map(|(m, _)| m));
            }
            c.push(&mine);
        }
    }
}

/// What a message is about, to match it against subscriptions.
enum Topic<'a> {
    Measurement(&'a str),
    Alerts,
    Events,
    Stats,
}

impl Topic<'_> {
    fn wanted_by(&self, s: &Subscription) -> bool {
        match self {
            Topic::Measurement(m) => s.measurements.contains(*m),
            Topic::Alerts => s.alerts,
            Topic::Events => s.events,
            Topic::Stats => s.stats,
        }
    }
}

fn message(kind: &str, mut body: Json) -> Bytes {
    body["type"] = Json::String(kind.into());
    Bytes::from(body.to_string())
}

fn run(hub: Arc<Hub>, rx: Receiver<Published>, metrics: Arc<Metrics>) {
    let mut last = Instant::now();
    let mut prev = (
        metrics.events_accepted.load(Ordering::Relaxed),
        metrics.events_processed.load(Ordering::Relaxed),
        Vec::<(String, u64)>::new(),
    );
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(first) => {
                // What queued up while the last round went out makes one
                // round (bounded, so a round stays a bounded burst).
                let mut round = vec![first];
                while round.len() < ROUND {
                    match rx.try_recv() {
                        Ok(p) => round.push(p),
                        Err(_) => break,
                    }
                }
                let mut msgs = Vec::new();
                for p in &round {
                    match p {
                        Published::Points(points) => msgs.extend(points.iter().map(|p| {
                            let m = message("point", crate::event::point_to_json(p));
                            (m, Topic::Measurement(&p.measurement))
                        })),
                        Published::Alerts(alerts) => msgs.extend(
                            alerts
                                .iter()
                                .map(|a| (message("alert", (**a).clone()), Topic::Alerts)),
                        ),
                        Published::Events(events) => msgs.extend(
                            events
                                .iter()
                                .map(|e| (message("event", e.clone()), Topic::Events)),
                        ),
                    }
                }
                hub.fan_out(&msgs);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if last.elapsed() >= Duration::from_secs(1) {
            let secs = last.elapsed().as_secs_f64();
            last = Instant::now();
            let stats = stats(&metrics, &mut prev, secs);
            hub.fan_out(&[(message("stats", stats), Topic::Stats)]);
        }
    }
}

/// Engine figures for a `stats` message; rates over the last `secs`.
fn stats(m: &Metrics, prev: &mut (u64, u64, Vec<(String, u64)>), secs: f64) -> Json {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (accepted, processed) = (get(&m.events_accepted), get(&m.events_processed));
    let rate = |now: u64, before: u64| (now.saturating_sub(before)) as f64 / secs;
    let plugins = m.plugins.lock().expect("metrics lock").clone();
    let per_plugin: Vec<Json> = plugins
        .iter()
        .map(|p| {
            let before = prev
                .2
                .iter()
                .find(|(n, _)| *n == p.name)
                .map_or(p.stats.events_in, |(_, v)| *v);
            json!({
                "name": p.name,
                "events_in_per_s": rate(p.stats.events_in, before),
                "events_in": p.stats.events_in,
                "events_out": p.stats.events_out,
                "failures": p.stats.failures,
                "breaker": p.breaker,
            })
        })
        .collect();
    let wm = m.watermark_ms.load(Ordering::Relaxed);
    let out = json!({
        "events_in_per_s": rate(accepted, prev.0),
        "events_out_per_s": rate(processed, prev.1),
        "received": get(&m.events_received),
        "accepted": accepted,
        "processed": processed,
        "rejected": m.rejected_total(),
        "late": get(&m.events_late),
        "dead_lettered": get(&m.events_dead_lettered),
        "queue_depth": get(&m.queue_depth),
        "watermark": (wm != i64::MIN).then_some(wm),
        "newest_event": m.newest_event_ms(),
        "plugins": per_plugin,
        "sinks": m.sinks.lock().expect("metrics lock").iter().map(|s| json!({"name": s.name, "state": s.state()})).collect::<Vec<_>>(),
    });
    *prev = (
        accepted,
        processed,
        plugins
            .iter()
            .map(|p| (p.name.clone(), p.stats.events_in))
            .collect(),
    );
    out
}

/// Picks an even sample of the events at the end of the pipeline: every
/// `stride`-th event, the stride set each second so that about `rate`
/// events a second are taken.
pub struct Sampler {
    rate: u64,
    stride: u64,
    seen: u64,
    in_second: u64,
    taken_in_second: u64,
    second: Instant,
}

impl Sampler {
    pub fn new(rate: u32) -> Self {
        Sampler {
            rate: u64::from(rate.max(1)),
            stride: 1,
            seen: 0,
            in_second: 0,
            taken_in_second: 0,
            second: Instant::now(),
        }
    }

    /// The events of `batch` to send.
    pub fn sample<'a>(&mut self, batch: &'a [Event]) -> Vec<&'a Event> {
        let mut out = Vec::new();
        for e in batch {
            self.seen += 1;
            self.in_second += 1;
            // The stride spreads the sample; the cap holds it to `rate`
            // while the stride still follows a rising stream.
            if self.seen.is_multiple_of(self.stride) && self.taken_in_second < self.rate {
                self.taken_in_second += 1;
                out.push(e);
            }
        }
        if self.second.elapsed() >= Duration::from_secs(1) {
            self.stride = (self.in_second / self.rate).max(1);
            self.in_second = 0;
            self.taken_in_second = 0;
            self.second = Instant::now();
        }
        out
    }
}
