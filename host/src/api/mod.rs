//! The HTTP API: event ingest, health, metrics. Built on axum (hyper).

mod admin;
mod dashboard;
pub(crate) mod ingest;
pub(crate) mod legacy;
mod prom;
mod query;
mod schemas;
pub mod server;
mod stream;

use crate::engine::EngineHandle;
use crate::telemetry::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Where accepted events go.
#[derive(Clone)]
pub enum Ingest {
    /// The embedded engine's queue: 202 once enqueued.
    Engine(EngineHandle),
    /// A collector: 202 once the Kafka broker acknowledged.
    Kafka(Arc<crate::kafka::Collector>),
    /// A processor-only host takes no events over HTTP.
    Disabled,
}

impl Ingest {
    fn has_room(&self) -> bool {
        match self {
            Ingest::Engine(h) => h.has_room(),
            Ingest::Kafka(_) | Ingest::Disabled => true,
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub ingest: Ingest,
    pub metrics: Arc<Metrics>,
    pub max_body: usize,
    /// `engine.max_future` in milliseconds.
    pub max_future_ms: i64,
    /// False while starting and once shutdown begins.
    pub ready: Arc<AtomicBool>,
    /// Plugin versions: the admin API's and the folder watcher's way in.
    pub manager: Arc<crate::live::Manager>,
    /// `None`: the admin API is disabled.
    pub admin_token: Option<String>,
    pub max_plugin_size: usize,
    /// The metric store behind the query API; `None`: off.
    pub store: Option<Arc<crate::store::Store>>,
    /// `Some`: reads need this bearer token (or the admin token).
    pub read_token: Option<String>,
    /// Live push (`/v1/stream`).
    pub hub: Option<Arc<crate::hub::Hub>>,
}

/// The router with every route and the CORS layer.
pub fn router(state: ApiState, cors_origins: &[String]) -> Router {
    Router::new()
        .route("/", get(dashboard::index))
        .route("/dashboard/{name}", get(dashboard::file))
        .route("/tracker.js", get(dashboard::tracker))
        .route("/v1/events", post(ingest::post_events))
        .route("/api/v1/events", post(ingest::post_events))
        .route("/v1/metrics", get(query::metrics))
        .route("/api/v1/metrics", get(query::metrics))
        .route("/v1/alerts", get(query::alerts))
        .route("/v1/stream", get(stream::stream))
        .route("/api/v1/stream/metrics", get(stream::stream))
        .route("/stats", get(query::stats))
        .route(
            "/prometheus/api/v1/labels",
            get(prom::labels).post(prom::labels),
        )
        .route(
            "/prometheus/api/v1/label/{name}/values",
            get(prom::label_values),
        )
        .route(
            "/prometheus/api/v1/series",
            get(prom::series).post(prom::series),
        )
        .route("/prometheus/api/v1/status/buildinfo", get(prom::buildinfo))
        .route(
            "/prometheus/api/v1/{kind}",
            get(prom::query).post(prom::query),
        )
        .route("/event", post(legacy::post_event))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/plugins", get(admin::list))
        .route(
            "/v1/plugins/{name}",
            get(admin::get_one).put(admin::put).delete(admin::delete),
        )
        .route("/v1/plugins/{name}/rollback", post(admin::rollback))
        .route("/v1/schemas", get(schemas::list))
        .route(
            "/v1/schemas/{event_type}",
            get(schemas::get_one)
                .put(schemas::put)
                .delete(schemas::delete),
        )
        .route("/v1/schemas/{event_type}/versions", get(schemas::versions))
        .layer(cors(cors_origins))
        .with_state(state)
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::POST, Method::GET, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            header::AUTHORIZATION,
        ])
        // A browser client reads Retry-After to back off on 429.
        .expose_headers([header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(86_400))
}

async fn readyz(State(s): State<ApiState>) -> Response {
    let accepting = s.ready.load(Ordering::Relaxed);
    let room = s.ingest.has_room();
    // A full sink holds the pipeline back: new events would only wait (429).
    // So does a file the engine cannot write (a full disk).
    let storage = s.metrics.storage_faults();
    let flowing = !s.metrics.sink_full() && storage.is_empty();
    // A processor whose consumer loop died does no work, whatever else holds.
    let fatal = s.metrics.fatal();
    // Replaying the write-ahead log at start: new events are taken (into the
    // log) but wait behind the replay.
    let replaying = s.metrics.wal.replaying.load(Ordering::Relaxed);
    let ready = accepting && room && flowing && fatal.is_none() && !replaying;
    let sinks: Vec<serde_json::Value> = s
        .metrics
        .sinks
        .lock()
        .expect("metrics lock")
        .iter()
        .map(|x| x.to_json())
        .collect();
    let body = serde_json::json!({
        "ready": ready,
        "accepting": accepting,
        "queue_has_room": room,
        "queue_depth": s.metrics.queue_depth.load(Ordering::Relaxed),
        "replaying_log": replaying,
        "plugins": *s.metrics.plugins.lock().expect("metrics lock"),
        "sinks": sinks,
        "storage": storage,
        "fatal": fatal,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(s): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Whether `given` is `token`, compared in constant time (as digests, so
/// the length does not show either).
pub(crate) fn token_matches(given: &str, token: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(token.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Why a request body could not be read.
pub(crate) enum BodyError {
    TooLarge,
    Broken(String),
}

/// Reads a body of at most `limit` bytes. The rest of an oversized body is
/// read and dropped (up to four times the limit), so a client that sends it
/// whole reads the 413 instead of a broken pipe.
pub(crate) async fn read_limited(
    body: axum::body::Body,
    limit: usize,
) -> Result<bytes::Bytes, BodyError> {
    use futures_util::StreamExt;
    let mut body = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
        seen += chunk.len();
        if seen <= limit {
            buf.extend_from_slice(&chunk);
        } else if seen > limit.saturating_mul(4) {
            break;
        }
    }
    if seen > limit {
        return Err(BodyError::TooLarge);
    }
    Ok(buf.freeze())
}

/// Reads and drops a refused request's body (up to `bound` bytes), so a
/// client that sends it whole reads the refusal instead of a broken pipe.
pub(crate) async fn drain(body: axum::body::Body, bound: usize) {
    use futures_util::StreamExt;
    let mut body = body.into_data_stream();
    let mut seen = 0usize;
    while let Some(Ok(chunk)) = body.next().await {
        seen += chunk.len();
        if seen > bound {
            break;
        }
    }
}

/// A JSON error answer: `{"error": "...", ...extra}`.
pub(crate) fn error(
    status: StatusCode,
    message: impl Into<String>,
    extra: serde_json::Value,
) -> Response {
    let mut body = serde_json::json!({ "error": message.into() });
    if let (Some(obj), serde_json::Value::Object(more)) = (body.as_object_mut(), extra) {
        obj.extend(more);
    }
    (status, axum::Json(body)).into_response()
}
