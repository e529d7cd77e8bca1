//! `nexuspipe gen`: reproducible website traffic for load tests and demos.
//!
//! Users browse in sessions (page views, product views, clicks), some add to
//! cart and buy (amount, currency), some fail to log in (bursts from one IP,
//! sometimes followed by a success). About 2% of events arrive out of order
//! (a few seconds old). With `--seed`, the same events every time.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct GenArgs {
    /// Events per second to send (0: as fast as the server accepts; event
    /// time then advances at a nominal 10 000 events/s).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Events per second of event time (default: `--rate`), e.g. a fast
    /// replay of a slow day: `--rate 0 --event-rate 500`.
    #[arg(long)]
    pub event_rate: Option<u64>,
    /// How long to send, e.g. `30s`, `2m`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Where to send: `http://host:port` (posts to /v1/events) or
    /// `kafka://host:port/topic` (produces with acks=all, keyed by user).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub target: String,
    /// Seed of the traffic; the same seed gives the same events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Events per request (1: single-event posts).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Event time of the first event (ms since the epoch); default: now.
    #[arg(long)]
    pub start_ms: Option<i64>,
    /// Write the generated events to this NDJSON file instead of sending them.
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,
    /// Sites the traffic comes from (`properties.site_id` = `site-1`...); 0: none.
    #[arg(long, default_value_t = 0)]
    pub sites: u32,
    /// Count a `429` as refused instead of sending the batch again (an
    /// overload test: the offered rate stays the rate asked for).
    #[arg(long)]
    pub no_retry: bool,
}

const PAGES: [&str; 8] = [
    "/",
    "/home",
    "/search",
    "/category/shoes",
    "/category/bags",
    "/about",
    "/cart",
    "/checkout",
];
const AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
];
const REFERRERS: [&str; 5] = [
    "https://www.google.com/",
    "https://t.co/x",
    "",
    "https://news.example/",
    "https://shop.example/home",
];
const CURRENCIES: [&str; 3] = ["EUR", "USD", "GBP"];

/// A generated event. Fields (and properties) are declared in key order, so
/// the JSON is what a sorted JSON object would print; built as a struct,
/// not a JSON value, to keep the generator's CPU off the server's.
#[derive(Debug, Clone, Serialize)]
pub struct GenEvent {
    event_id: String,
    event_type: &'static str,
    metadata: GenMetadata,
    #[serde(skip_serializing_if = "GenProperties::is_empty")]
    properties: GenProperties,
    session_id: Arc<str>,
    timestamp: i64,
    user_id: Arc<str>,
}

#[derive(Debug, Clone, Serialize)]
struct GenMetadata {
    ip_address: Arc<str>,
    platform: &'static str,
    referrer: &'static str,
    url: String,
    user_agent: &'static str,
}

#[derive(Debug, Clone, Default, Serialize)]
struct GenProperties {
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    currency: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    element: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    product_id: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quantity: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    site_id: Option<Arc<str>>,
}

impl GenProperties {
    fn is_empty(&self) -> bool {
        self.amount.is_none()
            && self.currency.is_none()
            && self.element.is_none()
            && self.path.is_none()
            && self.product_id.is_none()
            && self.quantity.is_none()
            && self.reason.is_none()
            && self.site_id.is_none()
    }
}

impl GenEvent {
    /// The Kafka key a collector would use: user, else session, else event id.
    pub fn key(&self) -> &str {
        [&*self.user_id, &*self.session_id, &self.event_id]
            .into_iter()
            .find(|k| !k.is_empty())
            .unwrap_or_default()
    }

    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(512);
        self.write_json(&mut out);
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    /// Appends the event's JSON: what its `Serialize` prints (a test checks),
    /// written directly. The generator shares the cores with the server it
    /// measures, and serde_json's per-byte escaping scan was a quarter of its CPU.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Keys are the literals below: nothing to escape. A key right after
        // `{` opens its object; any other follows a value and needs a comma.
        fn key(out: &mut Vec<u8>, k: &str) {
            if out.last() != Some(&b'{') {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b"\":");
        }
        fn num(out: &mut Vec<u8>, n: impl Serialize) {
            serde_json::to_writer(&mut *out, &n).expect("a number serializes");
        }
        out.push(b'{');
        key(out, "event_id");
        json_str(out, &self.event_id);
        key(out, "event_type");
        json_str(out, self.event_type);
        key(out, "metadata");
        let m = &self.metadata;
        out.push(b'{');
        for (k, v) in [
            ("ip_address", &*m.ip_address),
            ("platform", m.platform),
            ("referrer", m.referrer),
            ("url", &m.url),
            ("user_agent", m.user_agent),
        ] {
            key(out, k);
            json_str(out, v);
        }
        out.push(b'}');
        let p = &self.properties;
        if !p.is_empty() {
            key(out, "properties");
            out.push(b'{');
            if let Some(a) = p.amount {
                key(out, "amount");
                num(out, a);
            }
            for (k, v) in [
                ("currency", p.currency),
                ("element", p.element.as_deref()),
                ("path", p.path),
                ("product_id", p.product_id.as_deref()),
            ] {
                if let Some(v) = v {
                    key(out, k);
                    json_str(out, v);
                }
            }
            if let Some(q) = p.quantity {
                key(out, "quantity");
                num(out, q);
            }
            if let Some(r) = p.reason {
                key(out, "reason");
                json_str(out, r);
            }
            if let Some(site) = &p.site_id {
                key(out, "site_id");
                json_str(out, site);
            }
            out.push(b'}');
        }
        key(out, "session_id");
        json_str(out, &self.session_id);
        key(out, "timestamp");
        num(out, self.timestamp);
        key(out, "user_id");
        json_str(out, &self.user_id);
        out.push(b'}');
    }
}

/// `gen-` and 16 hex digits: `format!("gen-{n:016x}")` without the
/// formatting machinery, which showed in the generator's profile.
fn gen_id(n: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = Vec::with_capacity(20);
    id.extend_from_slice(b"gen-");
    id.extend((0..16).rev().map(|i| HEX[(n >> (i * 4)) as usize & 15]));
    String::from_utf8(id).expect("ASCII")
}

/// The next `n` events as a request body: one event, or a JSON array.
fn body_of(traffic: &mut Traffic, n: usize, out: &mut Vec<u8>) {
    if n == 1 {
        traffic.next_event().write_json(out);
        return;
    }
    out.push(b'[');
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        traffic.next_event().write_json(out);
    }
    out.push(b']');
}

/// Writes `s` as a JSON string. Generated text almost never needs escaping:
/// a scan without early exit (so it vectorizes) decides, and only text that
/// does goes through serde_json.
fn json_str(out: &mut Vec<u8>, s: &str) {
    let plain = s
        .bytes()
        .map(|b| u8::from(b < 0x20) | u8::from(b == b'"') | u8::from(b == b'\\'))
        .fold(0, |any, x| any | x)
        == 0;
    if plain {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string serializes");
    }
}

/// A deterministic traffic source.
pub struct Traffic {
    rng: fastrand::Rng,
    start_ms: i64,
    rate: u64,
    queue: std::collections::VecDeque<GenEvent>,
    next_id: u64,
    /// Sites of the traffic (`properties.site_id`); 0: none.
    sites: u32,
}

impl Traffic {
    /// `rate` events per second of event time, starting at `start_ms`.
    pub fn new(seed: u64, start_ms: i64, rate: u64) -> Self {
        Traffic {
            rng: fastrand::Rng::with_seed(seed),
            start_ms,
            rate: rate.max(1),
            queue: Default::default(),
            next_id: 0,
            sites: 0,
        }
    }

    /// Traffic from `sites` sites, a session's events all from one.
    pub fn with_sites(mut self, sites: u32) -> Self {
        self.sites = sites;
        self
    }

    fn ip(&mut self) -> String {
        format!("203.0.{}.{}", self.rng.u8(0..=255), self.rng.u8(1..=254))
    }

    /// Queues one user session (or a login burst).
    fn session(&mut self) {
        let r = &mut self.rng;
        let user: Arc<str> = format!("user-{}", r.u32(0..50_000)).into();
        let session: Arc<str> = format!("s-{:x}", r.u64(..)).into();
        let ua = AGENTS[r.usize(..AGENTS.len())];
        let referrer = REFERRERS[r.usize(..REFERRERS.len())];
        let ip: Arc<str> = self.ip().into();
        let r = &mut self.rng;
        let event = |event_type, url: &str, properties| GenEvent {
            event_id: String::new(),
            event_type,
            metadata: GenMetadata {
                ip_address: ip.clone(),
                platform: "web",
                referrer,
                url: ["https://shop.example", url].concat(),
                user_agent: ua,
            },
            properties,
            session_id: session.clone(),
            timestamp: 0,
            user_id: user.clone(),
        };
        let kind = r.u8(0..100);
        if kind < 4 {
            // A failed-login burst from one IP, sometimes ending in a success.
            let n = r.usize(3..12);
            for _ in 0..n {
                let props = GenProperties {
                    reason: Some("bad_password"),
                    ..Default::default()
                };
                self.queue.push_back(event("login_failed", "/login", props));
            }
            if r.bool() {
                self.queue
                    .push_back(event("login_success", "/login", Default::default()));
            }
            return;
        }
        for _ in 0..r.usize(1..6) {
            let page = PAGES[r.usize(..PAGES.len())];
            let props = GenProperties {
                path: Some(page),
                ..Default::default()
            };
            self.queue.push_back(event("page_view", page, props));
            if r.u8(0..100) < 40 {
                let props = GenProperties {
                    path: Some(page),
                    element: Some(format!("btn-{}", r.u8(0..20))),
                    ..Default::default()
                };
                self.queue.push_back(event("click", page, props));
            }
        }
        let product: Arc<str> = format!("sku-{:04}", r.u16(0..500)).into();
        let product_url = format!("/products/{product}");
        let props = GenProperties {
            product_id: Some(product.clone()),
            ..Default::default()
        };
        self.queue
            .push_back(event("product_view", &product_url, props));
        if r.u8(0..100) < 30 {
            let props = GenProperties {
                product_id: Some(product.clone()),
                quantity: Some(r.i64(1..4)),
                ..Default::default()
            };
            self.queue
                .push_back(event("add_to_cart", &product_url, props));
            if r.u8(0..100) < 50 {
                let amount = (r.f64() * 200.0 * 100.0).round() / 100.0 + 5.0;
                let currency = CURRENCIES[r.usize(..CURRENCIES.len())];
                let props = GenProperties {
                    amount: Some(amount),
                    currency: Some(currency),
                    product_id: Some(product.clone()),
                    ..Default::default()
                };
                self.queue.push_back(event("purchase", "/checkout", props));
            }
        }
    }

    /// The next event, with its id and event time.
    pub fn next_event(&mut self) -> GenEvent {
        while self.queue.is_empty() {
            self.session();
            if self.sites > 0 {
                // Drawn only with sites, so a seed without them gives the traffic it always did.
                let site: Arc<str> = format!("site-{}", self.rng.u32(1..=self.sites)).into();
                for e in &mut self.queue {
                    e.properties.site_id = Some(site.clone());
                }
            }
        }
        let mut e = self.queue.pop_front().expect("filled above");
        // Event time advances at `rate` events per second.
        let clock = self.start_ms + (self.next_id as i64 * 1000) / self.rate as i64;
        // ~2% out of order, up to 4 s late (within the default 5 s bound).
        let ts = if self.rng.u8(0..100) < 2 {
            clock - self.rng.i64(500..4_000)
        } else {
            clock
        };
        self.next_id += 1;
        e.event_id = gen_id(self.next_id);
        e.timestamp = ts;
        e
    }
}

/// Sends traffic and reports what the server accepted.
pub fn run(args: GenArgs) -> Result<()> {
    let start_ms = args.start_ms.unwrap_or_else(nexuspipe::event::now_ms);
    // Event time advances at the send rate; as-fast-as-possible runs use a
    // nominal 10 000 events/s of event time, so windows stay realistic.
    let event_rate = match (args.event_rate, args.rate) {
        (Some(r), _) => r,
        (None, 0) => 10_000,
        (None, r) => r,
    };
    let mut traffic = Traffic::new(args.seed, start_ms, event_rate).with_sites(args.sites);
    if let Some(path) = &args.output {
        let total = (args.rate as f64 * args.duration.as_secs_f64()) as u64;
        let mut s = String::new();
        for _ in 0..total {
            s.push_str(&traffic.next_event().to_json());
            s.push('\n');
        }
        std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))?;
        println!(
            "{{\"written\": {total}, \"file\": {:?}}}",
            path.display().to_string()
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    if let Some(rest) = args.target.strip_prefix("kafka://") {
        let Some((brokers, topic)) = rest
            .split_once('/')
            .filter(|(b, t)| !b.is_empty() && !t.is_empty())
        else {
            bail!("--target {}: expected kafka://host:port/topic", args.target);
        };
        // Like a collector, create the topic (default partitions) when missing.
        let k = nexuspipe::config::KafkaConfig::new(brokers, topic);
        nexuspipe::kafka::ensure_topics(&k, &[(k.topic.clone(), k.partitions, false)])
            .with_context(|| format!("kafka at {brokers}"))?;
        return rt.block_on(produce(args, k, traffic));
    }
    let url = format!("{}/v1/events", args.target.trim_end_matches('/'));
    if !url.starts_with("http://") {
        bail!(
            "--target {}: use http://host:port or kafka://host:port/topic",
            args.target
        );
    }
    rt.block_on(send(args, url, traffic))
}

/// Produces the traffic straight to a Kafka topic, as a collector would:
/// keyed by user (else session, else event id), acks=all. Latency is from
/// hand-over to the broker's acknowledgement of a batch's last event.
async fn produce(
    args: GenArgs,
    k: nexuspipe::config::KafkaConfig,
    mut traffic: Traffic,
) -> Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let (brokers, topic) = (&k.brokers, &k.topic);
    let producer: FutureProducer = nexuspipe::kafka::client_config(
        &k,
        &[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            ("compression.type", "lz4"),
            ("queue.buffering.max.messages", "1000000"),
        ],
    )
    .create()
    .with_context(|| format!("connecting to kafka at {brokers}"))?;
    let batch = args.batch.max(1);
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(args.connections.max(1) * 8));
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut sent_events = 0u64;
    let mut chunks = Vec::new();
    while wait_turn(started, deadline, args.rate, sent_events).await {
        let permit = permits.clone().acquire_owned().await?;
        let at = Instant::now();
        let mut acks = Vec::with_capacity(batch);
        for _ in 0..batch {
            let e = traffic.next_event();
            let payload = e.to_json();
            let mut record = FutureRecord::to(topic).key(e.key()).payload(&payload);
            loop {
                match producer.send_result(record) {
                    Ok(ack) => break acks.push(ack),
                    // The local queue is full: wait for acknowledgements.
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        back,
                    )) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((e, _)) => bail!("producing to `{topic}` at {brokers}: {e}"),
                }
            }
        }
        sent_events += batch as u64;
        chunks.push(tokio::spawn(async move {
            let ok = futures_util::future::join_all(acks)
                .await
                .iter()
                .filter(|r| matches!(r, Ok(Ok(_))))
                .count() as u64;
            drop(permit);
            (batch as u64, ok, at.elapsed())
        }));
    }
    let mut total = Tally::default();
    for c in chunks {
        let (n, ok, latency) = c.await?;
        total.sent += n;
        total.accepted += ok;
        total.failed += n - ok;
        total.latencies.push(latency);
    }
    report(total, started.elapsed().as_secs_f64(), batch)
}

/// Waits until the next batch is due at `rate` events/s (0: at once);
/// false when the run is over, so a paced run sends `rate × duration`.
async fn wait_turn(started: Instant, deadline: Instant, rate: u64, sent: u64) -> bool {
    if rate > 0 {
        let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
        if due >= deadline {
            return false;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    Instant::now() < deadline
}

#[derive(Default)]
struct Tally {
    sent: u64,
    accepted: u64,
    throttled: u64,
    /// With `--no-retry`: events answered `429`, and how many of those
    /// answers carried `Retry-After`.
    refused: u64,
    refused_with_retry_after: u64,
    failed: u64,
    latencies: Vec<Duration>,
}

async fn send(args: GenArgs, url: String, mut traffic: Traffic) -> Result<()> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let batch = args.batch.max(1);
    let (tx, rx) = async_channel(args.connections * 4);
    let started = Instant::now();
    let deadline = started + args.duration;
    // Producer: paces requests to the rate, in event order.
    let producer = {
        let rate = args.rate;
        tokio::spawn(async move {
            let mut sent_events = 0u64;
            let mut size = 512 * batch;
            while wait_turn(started, deadline, rate, sent_events).await {
                // Sized after the previous body: growing it would copy it again.
                let mut body = Vec::with_capacity(size);
                body_of(&mut traffic, batch, &mut body);
                size = body.len() + body.len() / 8;
                sent_events += batch as u64;
                if tx.send((Bytes::from(body), batch as u64)).await.is_err() {
                    break;
                }
            }
        })
    };
    let mut workers = Vec::new();
    for _ in 0..args.connections.max(1) {
        let rx = rx.clone();
        let client = client.clone();
        let url = url.clone();
        let no_retry = args.no_retry;
        workers.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while let Ok((body, n)) = rx.recv().await {
                loop {
                    let req = hyper::Request::post(&url)
                        .header("content-type", "application/json")
                        .body(Full::new(body.clone()))
                        .expect("valid request");
                    let sent = Instant::now();
                    match client.request(req).await {
                        Ok(resp) => {
                            let status = resp.status();
                            let retry_after = resp.headers().contains_key("retry-after");
                            let _ = resp.into_body().collect().await;
                            if status == hyper::StatusCode::TOO_MANY_REQUESTS && no_retry {
                                t.sent += n;
                                t.refused += n;
                                t.refused_with_retry_after += n * u64::from(retry_after);
                                break;
                            }
                            if status == hyper::StatusCode::TOO_MANY_REQUESTS {
                                // Back-pressure: wait and resend, nothing is dropped.
                                t.throttled += n;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                            t.latencies.push(sent.elapsed());
                            t.sent += n;
                            if status.is_success() {
                                t.accepted += n
                            } else {
                                t.failed += n
                            }
                        }
                        Err(_) => t.failed += n,
                    }
                    break;
                }
            }
            t
        }));
    }
    drop(rx);
    producer.await?;
    let mut total = Tally::default();
    for w in workers {
        let t = w.await?;
        total.sent += t.sent;
        total.accepted += t.accepted;
        total.throttled += t.throttled;
        total.refused += t.refused;
        total.refused_with_retry_after += t.refused_with_retry_after;
        total.failed += t.failed;
        total.latencies.extend(t.latencies);
    }
    report(total, started.elapsed().as_secs_f64(), batch)
}

/// Prints the run's figures; an error if any event was not accepted.
fn report(mut total: Tally, secs: f64, batch: usize) -> Result<()> {
    total.latencies.sort();
    let q = |p: f64| {
        total
            .latencies
            .get(
                ((total.latencies.len() as f64 * p) as usize)
                    .min(total.latencies.len().saturating_sub(1)),
            )
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let report = json!({
        "events_sent": total.sent,
        "events_accepted": total.accepted,
        "events_failed": total.failed,
        "retries_after_429": total.throttled,
        "refused_429": total.refused,
        "refused_429_with_retry_after": total.refused_with_retry_after,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "accepted_per_second": (total.accepted as f64 / secs).round(),
        // Of the requests answered (accepted, or failed); a refused one is not waited on.
        "request_latency_ms": {"p50": q(0.5), "p99": q(0.99)},
        "batch": batch,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if total.failed > 0 {
        bail!("{} events were refused or failed", total.failed);
    }
    Ok(())
}

/// A small bounded MPMC channel on tokio primitives.
fn async_channel<T: Send + 'static>(cap: usize) -> (tokio::sync::mpsc::Sender<T>, SharedRx<T>) {
    let (tx, rx) = tokio::sync::mpsc::channel(cap.max(1));
    (
        tx,
        SharedRx(std::sync::Arc::new(tokio::sync::Mutex::new(rx))),
    )
}

struct SharedRx<T>(std::sync::Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<T>>>);

impl<T> Clone for SharedRx<T> {
    fn clone(&self) -> Self {
        SharedRx(self.0.clone())
    }
}

impl<T> SharedRx<T> {
    async fn recv(&self) -> Result<T, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_what_serde_prints() {
        let mut a = Traffic::new(7, 1_700_000_000_000, 1000);
        let mut b = Traffic::new(7, 1_700_000_000_000, 1000);
        for n in [1, 100, 2000] {
            let mut body = Vec::new();
            body_of(&mut a, n, &mut body);
            let events: Vec<GenEvent> = (0..n).map(|_| b.next_event()).collect();
            let expected = if n == 1 {
                serde_json::to_string(&events[0])
            } else {
                serde_json::to_string(&events)
            };
            assert_eq!(String::from_utf8(body).unwrap(), expected.unwrap());
        }
        assert_eq!(gen_id(0x1234_abcd), format!("gen-{:016x}", 0x1234_abcd));
        assert_eq!(gen_id(u64::MAX), format!("gen-{:016x}", u64::MAX));
        // Text that needs escaping is escaped.
        let mut e = b.next_event();
        e.event_id = "a\"b\\c\u{1}é".into();
        assert_eq!(e.to_json(), serde_json::to_string(&e).unwrap());
    }
}
