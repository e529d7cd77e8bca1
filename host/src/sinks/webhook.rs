//! Webhook alert receivers: Alertmanager- or Slack-shaped JSON, signed per
//! Standard Webhooks, retried with backoff, dead-lettered after a bound.
//!
//! Each receiver has its own thread and bounded queue, so a slow or dead
//! receiver delays neither the pipeline nor the other receivers. A receiver
//! gets its alerts in order: the next is sent once the previous one was
//! delivered or given up. The `webhook-id` is derived from the alert (its
//! fingerprint and status), so it is the same on every retry and after a
//! restart that re-emits the alert: receivers deduplicate on it.
//!
//! [`alert_to_json`]: super::alert_to_json

use super::files::{AppendFile, SharedFile};
use super::retry::{Backoff, Failure};
use super::{severity_name, status_name};
pub use crate::config::secret_key;
use crate::config::{WebhookConfig, WebhookFormat};
use crate::event::format_timestamp;
use crate::runtime::{Alert, AlertStatus};
use crate::telemetry::SinkStats;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// The message id of an alert notification: stable for the same alert and
/// status, so retries and replays carry the same id.
pub fn message_id(a: &Alert) -> String {
    let mut h = Sha256::new();
    for part in [
        a.fingerprint.as_str(),
        status_name(a.status),
        &a.starts_at.to_string(),
        &a.ends_at.map(|e| e.to_string()).unwrap_or_default(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!("msg_{}", &hex::encode(h.finalize())[..32])
}

/// The request body for `format`.
pub fn body(a: &Alert, format: WebhookFormat, receiver: &str) -> Json {
    match format {
        WebhookFormat::Alertmanager => alertmanager(a, receiver),
        WebhookFormat::Slack => slack(a),
    }
}

/// The Prometheus Alertmanager webhook payload (version 4), one alert per
/// notification; the rule id is the `alertname`.
fn alertmanager(a: &Alert, receiver: &str) -> Json {
    let mut labels = serde_json::Map::new();
    labels.insert("alertname".into(), json!(a.rule_id));
    labels.insert("severity".into(), json!(severity_name(a.severity)));
    labels.insert("key".into(), json!(a.key));
    for (k, v) in &a.labels {
        labels.insert(k.clone(), json!(v));
    }
    let annotations = json!({ "summary": a.summary });
    let status = status_name(a.status);
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\"}}", a.rule_id),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": { "alertname": a.rule_id },
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": format_timestamp(a.starts_at),
            // Alertmanager's "no end yet".
            "endsAt": a.ends_at.map_or_else(|| "0001-01-01T00:00:00Z".to_string(), format_timestamp),
            "generatorURL": "",
            "fingerprint": a.fingerprint,
        }],
    })
}

/// A Slack incoming-webhook message.
fn slack(a: &Alert) -> Json {
    let (mark, status) = match a.status {
        AlertStatus::Firing => (":rotating_light:", "FIRING"),
        AlertStatus::Resolved => (":white_check_mark:", "RESOLVED"),
    };
    let mut text = format!(
        "{mark} *[{status}] {}* ({}) `{}`: {}\nsince {}",
        a.rule_id,
        severity_name(a.severity),
        a.key,
        a.summary,
        format_timestamp(a.starts_at)
    );
    if let Some(end) = a.ends_at {
        text.push_str(&format!(", ended {}", format_timestamp(end)));
    }
    json!({ "text": text })
}

/// One notification waiting for its receiver.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Pending {
    id: String,
    body: String,
    /// The alert record, for the dead-letter file.
    alert: Json,
    #[serde(skip, default = "Instant::now")]
    queued: Instant,
}

struct Queue {
    items: VecDeque<Pending>,
    closing: Option<Instant>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
    stats: Arc<SinkStats>,
}

/// Everything a delivery thread needs to send.
struct Target {
    name: String,
    url: String,
    key: Option<Vec<u8>>,
    headers: reqwest::header::HeaderMap,
    http: reqwest::Client,
    max_attempts: u32,
    backoff: Backoff,
    dead: SharedFile,
}

/// One receiver: its queue and delivery thread.
pub struct WebhookSink {
    name: String,
    format: WebhookFormat,
    rules: Option<HashSet<String>>,
    capacity: usize,
    shared: Arc<Shared>,
    dead: SharedFile,
    spool: PathBuf,
    drain_timeout: Duration,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WebhookSink {
    /// Starts the receiver's thread; alerts a previous run could not deliver
    /// before it stopped are sent first.
    pub fn start(
        name: &str,
        config: &WebhookConfig,
        data_dir: &Path,
        dead: SharedFile,
        stats: Arc<SinkStats>,
    ) -> anyhow::Result<WebhookSink> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &config.headers {
            headers.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes())?,
                reqwest::header::HeaderValue::from_str(v)?,
            );
        }
        let target = Target {
            name: name.to_string(),
            url: config.url.clone(),
            key: config
                .secret
                .as_deref()
                .map(secret_key)
                .transpose()
                .map_err(anyhow::Error::msg)?,
            headers,
            http: reqwest::Client::builder().timeout(config.timeout).build()?,
            max_attempts: config.max_attempts,
            backoff: Backoff {
                initial: config.retry_initial,
                max: config.retry_max,
            },
            dead: dead.clone(),
        };
        let spool = data_dir.join("spool").join(format!("webhook-{name}.jsonl"));
        let items = load_spool(&spool)?;
        if !items.is_empty() {
            tracing::info!(
                receiver = name,
                alerts = items.len(),
                "sending alerts left from the last run first"
            );
        }
        stats.backlog.store(items.len() as u64, Ordering::Relaxed);
        stats.handed.store(items.len() as u64, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: items.into(),
                closing: None,
            }),
            wake: tokio::sync::Notify::new(),
            stats,
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("nexuspipe-webhook-{name}"))
            .spawn(move || rt.block_on(deliver_all(s, target)))?;
        Ok(WebhookSink {
            name: name.to_string(),
            format: config.format,
            rules: config.rules.as_ref().map(|r| r.iter().cloned().collect()),
            capacity: config.queue_capacity,
            shared,
            dead,
            spool,
            drain_timeout: config.timeout.max(Duration::from_secs(5)),
            thread: Some(thread),
        })
    }

    /// Queues an alert for this receiver (if its rules include it), with its
    /// [`message_id`] and record ([`alert_to_json`]), which the caller makes
    /// once for all receivers. Never blocks: a full queue sends the alert to
    /// the dead-letter file.
    pub fn push(&self, a: &Alert, id: &str, record: &Json) {
        if self.rules.as_ref().is_some_and(|r| !r.contains(&a.rule_id)) {
            return;
        }
        let item = Pending {
            id: id.to_string(),
            body: body(a, self.format, &self.name).to_string(),
            alert: record.clone(),
            queued: Instant::now(),
        };
        let mut q = self.shared.queue.lock().expect("webhook queue lock");
        self.shared.stats.handed.fetch_add(1, Ordering::Relaxed);
        if q.items.len() >= self.capacity {
            drop(q);
            self.shared.stats.settled.fetch_add(1, Ordering::Relaxed);
            let error = format!("receiver backlog full ({} alerts waiting)", self.capacity);
            tracing::error!(receiver = %self.name, rule = %a.rule_id, "{error}; the alert goes to the dead-letter file");
            dead_letter(&self.dead, &self.shared.stats, &self.name, &item, &error, 0);
            return;
        }
        q.items.push_back(item);
        self.shared
            .stats
            .backlog
            .store(q.items.len() as u64, Ordering::Relaxed);
        drop(q);
        self.shared.wake.notify_one();
    }

    pub fn stats(&self) -> &SinkStats {
        &self.shared.stats
    }

    /// Delivers what is queued for a little while, then keeps the rest in
    /// the spool for the next run, and stops the thread.
    pub fn close(mut self) {
        self.shared
            .queue
            .lock()
            .expect("webhook queue lock")
            .closing = Some(Instant::now() + self.drain_timeout);
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!(receiver = %self.name, "a webhook delivery thread panicked");
        }
        let q = self.shared.queue.lock().expect("webhook queue lock");
        let result = if q.items.is_empty() {
            match std::fs::remove_file(&self.spool) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            let mut text = String::new();
            for item in &q.items {
                text.push_str(&serde_json::to_string(item).expect("serializable"));
                text.push('\n');
            }
            tracing::warn!(receiver = %self.name, alerts = q.items.len(), "alerts not delivered before shutdown are spooled and sent after the restart");
            std::fs::create_dir_all(self.spool.parent().expect("in the data dir"))
                .and_then(|()| crate::fsutil::write_atomic(&self.spool, text.as_bytes()))
        };
        if let Err(e) = result {
            tracing::error!(receiver = %self.name, error = %e, file = %self.spool.display(), "spooling undelivered alerts failed");
        }
    }
}

fn load_spool(path: &Path) -> anyhow::Result<Vec<Pending>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut items = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line?;
        let item: Pending = serde_json::from_str(&line).map_err(|e| {
            anyhow::anyhow!(
                "{}: line {}: not a spooled alert: {e}",
                path.display(),
                i + 1
            )
        })?;
        items.push(item);
    }
    Ok(items)
}

fn dead_letter(
    dead: &SharedFile,
    stats: &SinkStats,
    receiver: &str,
    item: &Pending,
    error: &str,
    attempts: u32,
) {
    stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    let record = json!({
        "at": format_timestamp(crate::event::now_ms()),
        "kind": "webhook_undelivered",
        "sink": receiver,
        "webhook_id": item.id,
        "attempts": attempts,
        "error": error,
        "alert": item.alert,
    });
    AppendFile::write_shared(dead, &record);
}

async fn deliver_all(s: Arc<Shared>, t: Target) {
    loop {
        // The front item stays queued (and spooled at shutdown) until it is done.
        let item = loop {
            let wait = {
                let q = s.queue.lock().expect("webhook queue lock");
                match (q.items.front(), q.closing) {
                    (Some(item), _) => break item.clone(),
                    (None, Some(_)) => return,
                    (None, None) => Duration::from_secs(1),
                }
            };
            let _ = tokio::time::timeout(wait, s.wake.notified()).await;
        };
        if deliver(&s, &t, &item).await {
            let mut q = s.queue.lock().expect("webhook queue lock");
            q.items.pop_front();
            s.stats.settled.fetch_add(1, Ordering::Relaxed);
            s.stats
                .backlog
                .store(q.items.len() as u64, Ordering::Relaxed);
        } else {
            return; // shutting down: the item stays queued
        }
    }
}

/// Sends one notification until it is delivered or given up (dead-lettered);
/// `false` if shutdown interrupted it.
async fn deliver(s: &Shared, t: &Target, item: &Pending) -> bool {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let failure = match send(t, item).await {
            Ok(()) => {
                if !s.stats.up.load(Ordering::Relaxed) {
                    tracing::info!(receiver = %t.name, "webhook deliveries succeed again");
                }
                s.stats.delivered(1);
                s.stats
                    .latency
                    .lock()
                    .expect("sink stats lock")
                    .record(item.queued.elapsed());
                return true;
            }
            Err(f) => f,
        };
        s.stats.failed(failure.message());
        let retry = matches!(failure, Failure::Transient(_)) && attempt < t.max_attempts;
        if !retry {
            tracing::error!(receiver = %t.name, id = %item.id, attempts = attempt, error = %failure.message(), "giving up on a webhook; the alert goes to the dead-letter file");
            dead_letter(&t.dead, &s.stats, &t.name, item, failure.message(), attempt);
            return true;
        }
        tracing::warn!(receiver = %t.name, id = %item.id, attempt, error = %failure.message(), "webhook delivery failed; retrying with backoff");
        let delay = t.backoff.delay(attempt - 1);
        let closing = s.queue.lock().expect("webhook queue lock").closing;
        if closing.is_some_and(|d| Instant::now() + delay > d) {
            return false;
        }
        tokio::time::sleep(delay).await;
    }
}

async fn send(t: &Target, item: &Pending) -> Result<(), Failure> {
    let mut req = t
        .http
        .post(&t.url)
        .headers(t.headers.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &item.id);
    if let Some(key) = &t.key {
        // A fresh timestamp per attempt: receivers reject old ones (replay protection).
        let ts = crate::event::now_ms() / 1000;
        req = req.header("webhook-timestamp", ts.to_string()).header(
            "webhook-signature",
            sign(key, &item.id, ts, item.body.as_bytes()),
        );
    }
    let resp = req
        .body(item.body.clone())
        .send()
        .await
        .map_err(|e| Failure::from_reqwest(&e))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = super::retry::answer_text(resp).await;
    let mut f = Failure::from_status(status.as_u16(), &text);
    // Only 5xx, 429 (and 408) are retried; any other answer is final.
    if let Failure::Rejected { status, message } = f {
        f = Failure::Refused { status, message };
    }
    Err(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The reference test vector of the Standard Webhooks libraries.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(secret_key("plain").unwrap(), b"plain");
        assert!(secret_key("whsec_***").is_err());
    }
}
