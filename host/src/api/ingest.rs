//! `POST /v1/events`: one JSON event, a JSON array, or NDJSON; optionally gzip.
//! Answers 202 once the events are in the engine's queue.

use super::Ingest;
use super::{ApiState, error};
use crate::engine::SubmitError;
use crate::event::{EventDefaults, EventError, from_json, now_ms, parse_events};
use crate::kafka::collector::SendError;
use crate::runtime::Event;
use crate::telemetry::RejectReason;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

#[derive(serde::Deserialize, Default)]
pub(super) struct IngestParams {
    /// Accept the valid events of a batch and report the rejected ones.
    #[serde(default)]
    pub(super) partial: bool,
}

/// One rejected event of a batch.
#[derive(Debug, serde::Serialize)]
pub(super) struct Rejected {
    /// Position in the batch (array index, or NDJSON line - 1).
    pub index: usize,
    /// NDJSON line number (1-based), for NDJSON bodies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
    /// The JSON Schema keyword that failed, for a schema violation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip)]
    pub kind: crate::event::ErrorKind,
}

/// Where an event was in its request: its index, and its NDJSON line.
type Position = (usize, Option<usize>);

/// Checks each event against its type's schema. An invalid one is rejected
/// (`[schemas] on_invalid = "reject"`: listed, with its position) or, with
/// `"dead_letter"`, becomes a dead letter with its errors (written once the
/// request succeeds; it does not go through the pipeline). Returns the
/// events that go on, the rejected ones and the dead letters.
fn check_schemas(
    state: &ApiState,
    events: Vec<Event>,
    position: impl Fn(usize) -> Position,
) -> (Vec<Event>, Vec<Rejected>, Vec<Json>) {
    let schemas = state.manager.schemas();
    let checker = schemas.snapshot();
    if checker.is_empty() {
        return (events, Vec::new(), Vec::new());
    }
    let dead_letter = schemas.on_invalid() == crate::config::OnInvalid::DeadLetter;
    let outcome = if dead_letter {
        "dead_lettered"
    } else {
        "rejected"
    };
    let (mut valid, mut rejected, mut dead) =
        (Vec::with_capacity(events.len()), Vec::new(), Vec::new());
    for (i, e) in events.into_iter().enumerate() {
        let Some(verdict) = checker.check(&e) else {
            valid.push(e);
            continue;
        };
        let first = verdict.violations.first();
        let rule = first.map_or_else(String::new, |v| v.rule.clone());
        if dead_letter {
            dead.push(json!({
                "at": crate::event::format_timestamp(now_ms()),
                "kind": "schema_violation",
                "schema": {"event_type": verdict.event_type, "version": verdict.version},
                "rule": rule,
                "errors": verdict.violations,
                "events": [crate::event::to_json(&e)],
            }));
        } else {
            // Dead letters are counted when written (see `admit`).
            *state
                .metrics
                .schema_violations
                .lock()
                .expect("metrics lock")
                .entry((verdict.event_type.clone(), rule, outcome))
                .or_default() += 1;
            let (index, line) = position(i);
            rejected.push(Rejected {
                index,
                line,
                field: first.map_or_else(String::new, |v| v.field.clone()),
                message: first.map_or_else(String::new, |v| v.message.clone()),
                rule: first.map(|v| v.rule.clone()),
                kind: crate::event::ErrorKind::Schema,
            });
        }
    }
    (valid, rejected, dead)
}

/// Writes the dead letters of a request that succeeded (off the async
/// threads: the file is synced) and counts them.
async fn write_dead_letters(state: &ApiState, dead: Vec<Json>) {
    if dead.is_empty() {
        return;
    }
    let m = &state.metrics;
    m.events_dead_lettered
        .fetch_add(dead.len() as u64, Ordering::Relaxed);
    {
        let mut counts = m.schema_violations.lock().expect("metrics lock");
        for d in &dead {
            let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
            let event_type = d["schema"]["event_type"].as_str().unwrap_or_default();
            *counts
                .entry((event_type.to_string(), s("rule"), "dead_lettered"))
                .or_default() += 1;
        }
    }
    let file = state.manager.schemas().dead_letters().clone();
    let _ = tokio::task::spawn_blocking(move || {
        crate::sinks::files::AppendFile::write_all_shared(&file, &dead);
    })
    .await;
}

/// The NDJSON line of each event of a body, in order (blank lines hold none).
fn ndjson_lines(body: &[u8]) -> Vec<usize> {
    body.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(i, _)| i + 1)
        .collect()
}

/// Counts rejected events by what was wrong with them.
fn count_rejected(m: &crate::telemetry::Metrics, rejected: &[Rejected]) {
    for r in rejected {
        m.reject(RejectReason::of(r.kind), 1);
    }
}

/// Reads the body under the size limit, decompressing gzip. The limit applies
/// to the decompressed size too, so a small gzip bomb is still refused.
pub(super) async fn read_body(
    state: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, Response> {
    let limit = state.max_body;
    let too_large = |state: &ApiState| {
        state.metrics.reject(RejectReason::BodyTooLarge, 1);
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes (http.max_body)"),
            json!({}),
        )
    };
    let raw = match super::read_limited(body, limit).await {
        Ok(raw) => raw,
        Err(super::BodyError::TooLarge) => return Err(too_large(state)),
        Err(super::BodyError::Broken(e)) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
                json!({}),
            ));
        }
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(raw),
        "gzip" | "x-gzip" => match gunzip(&raw, limit) {
            Ok(out) => Ok(Bytes::from(out)),
            Err(Gunzip::TooLarge) => Err(too_large(state)),
            Err(Gunzip::Invalid(e)) => {
                state.metrics.reject(RejectReason::BadEncoding, 1);
                Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("body is not valid gzip: {e}"),
                    json!({}),
                ))
            }
        },
        other => {
            state.metrics.reject(RejectReason::BadEncoding, 1);
            Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding `{other}` is not supported (use gzip or none)"),
                json!({}),
            ))
        }
    }
}

/// Why a gzip body was refused.
#[derive(Debug)]
pub enum Gunzip {
    /// More than the limit once decompressed (a gzip bomb, or just too big).
    TooLarge,
    Invalid(std::io::Error),
}

/// Decompresses a gzip body, reading at most one byte past `limit`: the
/// limit applies to the decompressed size, so a small bomb is refused early.
pub fn gunzip(raw: &[u8], limit: usize) -> Result<Vec<u8>, Gunzip> {
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
    let mut dec = flate2::read::GzDecoder::new(raw).take(limit as u64 + 1);
    dec.read_to_end(&mut out).map_err(Gunzip::Invalid)?;
    if out.len() > limit {
        return Err(Gunzip::TooLarge);
    }
    Ok(out)
}

pub(super) fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.to_ascii_lowercase();
            ct.starts_with("application/x-ndjson")
                || ct.starts_with("application/jsonl")
                || ct.starts_with("application/ndjson")
        })
}

/// Splits a body into JSON values with their position; malformed JSON is an
/// error naming the line (NDJSON) or the byte offset.
pub fn split_body(body: &[u8], ndjson: bool) -> Result<Vec<(usize, Option<usize>, Json)>, String> {
    if ndjson {
        let mut out = Vec::new();
        for (i, line) in body.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let v: Json = serde_json::from_slice(line)
                .map_err(|e| format!("line {}: malformed JSON: {e}", i + 1))?;
            out.push((out.len(), Some(i + 1), v));
        }
        return Ok(out);
    }
    let v: Json = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    Ok(match v {
        Json::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i, None, v))
            .collect(),
        other => vec![(0, None, other)],
    })
}

pub(super) struct RequestDefaults {
    pub ip: String,
    pub user_agent: Option<String>,
    pub max_future_ms: i64,
}

impl RequestDefaults {
    pub fn new(state: &ApiState, peer: SocketAddr, headers: &HeaderMap) -> Self {
        RequestDefaults {
            max_future_ms: state.max_future_ms,
            ip: peer.ip().to_string(),
            user_agent: headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    }

    pub fn event_defaults(&self) -> EventDefaults<'_> {
        EventDefaults {
            now_ms: now_ms(),
            ip_address: Some(&self.ip),
            user_agent: self.user_agent.as_deref(),
            max_future_ms: Some(self.max_future_ms),
        }
    }
}

/// Validates, then hands the events on (see [`deliver`]); shared by both ingest routes.
pub(super) async fn accept(
    state: &ApiState,
    received: Instant,
    items: Vec<(usize, Option<usize>, Json)>,
    partial: bool,
    convert: impl Fn(Json) -> Result<Event, EventError>,
) -> Response {
    let m = &state.metrics;
    m.events_received
        .fetch_add(items.len() as u64, Ordering::Relaxed);
    let mut events = Vec::with_capacity(items.len());
    let mut positions = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    for (index, line, v) in items {
        match convert(v) {
            Ok(e) => {
                events.push(e);
                positions.push((index, line));
            }
            Err(e) => rejected.push(Rejected {
                index,
                line,
                field: e.field,
                message: e.message,
                rule: None,
                kind: e.kind,
            }),
        }
    }
    if !rejected.is_empty() && !partial {
        // Refused whole: nothing is dead-lettered for a batch sent again.
        return finish(state, received, events, rejected, partial, Vec::new()).await;
    }
    let (events, invalid, dead) = check_schemas(state, events, |i| positions[i]);
    rejected.extend(invalid);
    rejected.sort_by_key(|r| r.index);
    finish(state, received, events, rejected, partial, dead).await
}

/// Answers a request whose events were checked: `400` naming the first
/// rejected event (the whole batch refused, unless `partial`), else the
/// valid ones go on (see [`admit`]).
async fn finish(
    state: &ApiState,
    received: Instant,
    events: Vec<Event>,
    rejected: Vec<Rejected>,
    partial: bool,
    dead: Vec<Json>,
) -> Response {
    let m = &state.metrics;
    if !rejected.is_empty() && (!partial || (events.is_empty() && dead.is_empty())) {
        // The valid events refused with the batch count as invalid too.
        m.reject(RejectReason::InvalidEvent, events.len() as u64);
        count_rejected(m, &rejected);
        let first = &rejected[0];
        let at = match first.line {
            Some(l) => format!("line {l}"),
            None => format!("event {}", first.index),
        };
        let field = if first.field.is_empty() {
            String::new()
        } else {
            format!(" field `{}`", first.field)
        };
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "{at}{field}: {}{}",
                first.message,
                if partial {
                    ""
                } else {
                    " (the whole batch was rejected; use ?partial=true to accept the valid events)"
                }
            ),
            json!({ "rejected": rejected }),
        );
    }
    admit(state, received, events, rejected, dead).await
}

/// Hands the valid events of a request on and answers 202 with the count
/// (and the rejected ones, with `?partial=true`). Schema dead letters are
/// written once the valid events are taken, so a request refused (429, 503)
/// and sent again leaves each once; they are not counted as accepted (they
/// do not go through the pipeline).
async fn admit(
    state: &ApiState,
    received: Instant,
    events: Vec<Event>,
    rejected: Vec<Rejected>,
    dead: Vec<Json>,
) -> Response {
    let m = &state.metrics;
    count_rejected(m, &rejected);
    let n = events.len();
    // A host that takes no events refuses dead letters too.
    if (n > 0 || matches!(state.ingest, super::Ingest::Disabled))
        && let Err(r) = deliver(state, events, received).await
    {
        return r;
    }
    m.events_accepted.fetch_add(n as u64, Ordering::Relaxed);
    let mut body = json!({ "accepted": n });
    if !rejected.is_empty() {
        body["rejected"] = json!(rejected);
    }
    if !dead.is_empty() {
        body["dead_lettered"] = json!(dead.len());
        write_dead_letters(state, dead).await;
    }
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

/// 429 (or `status`) with `Retry-After`: the client retries later.
fn retry_later(status: StatusCode, message: String) -> Response {
    let mut r = error(status, message, json!({}));
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

/// Puts validated events in the engine's queue or, on a collector, in Kafka
/// (acknowledged). Never a 2xx for events that may be lost.
async fn deliver(state: &ApiState, events: Vec<Event>, received: Instant) -> Result<(), Response> {
    let m = &state.metrics;
    let n = events.len() as u64;
    match &state.ingest {
        Ingest::Engine(engine) => match engine.submit(events, received).await {
            Ok(()) => Ok(()),
            Err(e @ SubmitError::QueueFull { .. }) => {
                m.reject(RejectReason::QueueFull, n);
                Err(retry_later(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("{e}; retry later"),
                ))
            }
            Err(e @ SubmitError::Stopped) => Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{e}; nothing was accepted"),
                json!({}),
            )),
            Err(e @ SubmitError::Log(_)) => {
                m.reject(RejectReason::Storage, n);
                tracing::warn!(error = %e, events = n, "answering 503: the write-ahead log did not take the events");
                Err(retry_later(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{e}; nothing was accepted, retry later"),
                ))
            }
        },
        Ingest::Kafka(collector) => match collector.send(&events).await {
            Ok(()) => Ok(()),
            Err(e @ SendError::QueueFull) => {
                m.reject(RejectReason::QueueFull, n);
                Err(retry_later(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("{e}; retry later"),
                ))
            }
            Err(e @ SendError::Broker(_)) => {
                m.reject(RejectReason::Broker, n);
                tracing::warn!(error = %e, events = n, "answering 503: Kafka did not acknowledge");
                Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{e}; retry later (events of this request may have been written already)"
                    ),
                    json!({}),
                ))
            }
        },
        Ingest::Disabled => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this host runs `--role processor`; send events to a collector",
            json!({}),
        )),
    }
}

/// Reads, splits and validates a request body; `normalize` rewrites each
/// item first (the tracker-compatible `/event` route), `None` for canonical events.
pub(super) async fn ingest(
    state: ApiState,
    peer: SocketAddr,
    params: IngestParams,
    headers: HeaderMap,
    body: Body,
    normalize: Option<fn(Json) -> Result<Json, EventError>>,
) -> Response {
    let received = Instant::now();
    let bytes = match read_body(&state, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ndjson = is_ndjson(&headers);
    let defaults = RequestDefaults::new(&state, peer, &headers);
    let d = defaults.event_defaults();
    if normalize.is_none()
        && let Some(events) = parse_events(&bytes, ndjson, &d)
    {
        // Valid canonical events, parsed without the JSON-value detour.
        state
            .metrics
            .events_received
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let lines = std::cell::OnceCell::new();
        let (events, rejected, dead) = check_schemas(&state, events, |i| {
            let line = ndjson.then(|| lines.get_or_init(|| ndjson_lines(&bytes))[i]);
            (i, line)
        });
        return finish(&state, received, events, rejected, params.partial, dead).await;
    }
    let items = match split_body(&bytes, ndjson) {
        Ok(items) => items,
        Err(msg) => {
            state.metrics.reject(RejectReason::MalformedJson, 1);
            return error(StatusCode::BAD_REQUEST, msg, json!({}));
        }
    };
    let normalize = normalize.unwrap_or(Ok);
    accept(&state, received, items, params.partial, |v| {
        from_json(normalize(v)?, &d)
    })
    .await
}

pub(super) async fn post_events(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<IngestParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(state, peer, params, headers, body, None).await
}
