//! `GET /v1/stream` (alias `/api/v1/stream/metrics`): live push over a
//! WebSocket, or Server-Sent Events for curl and simple clients.
//!
//! A WebSocket client sends `{"subscribe": ["revenue", "alerts", "events",
//! "stats"]}` (measurements by name, `alerts`, `events` for a sample of the
//! live stream, `stats` for engine figures once a second), again whenever it
//! wants another subscription. An SSE client names its subscription in
//! `?subscribe=revenue,alerts`. Messages are JSON objects with a `type`:
//! `point`, `alert`, `event`, `stats`, and `dropped` (`count`: what this
//! client missed because it read too slowly).

#![allow(
    clippy::result_large_err,
    reason = "helpers of handlers return the refusal itself, built once per refused request"
)]

use super::{ApiState, error};
use crate::hub::{Client, Hub, Subscription};
use axum::extract::ws::{
    Message, Utf8Bytes, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn hub(s: &ApiState) -> Result<&Arc<Hub>, Response> {
    s.hub.as_ref().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "live push is not available on this host",
            json!({}),
        )
    })
}

fn full(h: &Hub) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "{} clients are connected (stream.max_clients); retry later",
            h.settings.max_clients
        ),
        json!({ "reason": "too_many_clients" }),
    )
}

pub(super) async fn stream(
    State(s): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // A browser's WebSocket cannot send `Authorization`: it offers the token
    // as a subprotocol, `new WebSocket(url, ["nexuspipe", "bearer." + token])`,
    // so the token is never in the URL (nor in logs of it).
    let offered = headers
        .get(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .map(str::trim)
                .find_map(|p| p.strip_prefix("bearer."))
        });
    if let Some(r) = super::query::read_gate_for(&s, super::bearer(&headers).or(offered)) {
        return r;
    }
    let hub = match hub(&s) {
        Ok(h) => h.clone(),
        Err(r) => return r,
    };
    let subscription = Subscription::of(
        params
            .get("subscribe")
            .map(String::as_str)
            .unwrap_or("")
            .split(','),
    );
    match ws {
        Ok(ws) => {
            let Some(client) = hub.connect(subscription) else {
                return full(&hub);
            };
            // Clients only send small subscribe messages: a larger frame is abuse.
            ws.max_message_size(64 << 10)
                .max_frame_size(64 << 10)
                .protocols(["nexuspipe"])
                .on_upgrade(move |socket| serve_ws(socket, hub, client))
        }
        Err(_) => {
            if !params.contains_key("subscribe") {
                return super::query::bad(
                    "subscribe",
                    "name what to receive: ?subscribe=<measurement>,alerts,events,stats (or open a WebSocket)",
                    json!(["<measurement>", "alerts", "events", "stats"]),
                );
            }
            let Some(client) = hub.connect(subscription) else {
                return full(&hub);
            };
            sse(hub, client)
        }
    }
}

/// Bytes of messages written to a WebSocket between two flushes.
const FLUSH_BYTES: usize = 64 << 10;

/// Disconnects the client when the connection's task ends, however it ends.
struct Leave(Arc<Hub>, Arc<Client>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.disconnect(&self.1);
    }
}

async fn serve_ws(mut socket: WebSocket, hub: Arc<Hub>, client: Arc<Client>) {
    let _leave = Leave(hub.clone(), client.clone());
    let ping_every = hub.settings.ping_interval.max(Duration::from_millis(100));
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    let mut heard = Instant::now();
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = client.wake.notified() => {
                // What waits goes out in parts of FLUSH_BYTES with a flush
                // each, not a write per message (a write per message cost a
                // third of the engine's throughput with 1 000 clients). A
                // flush waits for the socket, so a slow reader holds at most
                // that much here and the rest waits in its bounded queue.
                batch.clear();
                client.take(&mut batch, FLUSH_BYTES);
                for msg in batch.drain(..) {
                    let Ok(text) = Utf8Bytes::try_from(msg) else { continue };
                    if socket.feed(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                if socket.flush().await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => {
                let Some(Ok(msg)) = incoming else { return };
                heard = Instant::now();
                match msg {
                    Message::Text(t) => {
                        let parsed: Result<serde_json::Value, _> = serde_json::from_str(&t);
                        match parsed.ok().and_then(|v| v.get("subscribe").cloned()) {
                            Some(serde_json::Value::Array(names)) => {
                                let names: Vec<String> = names.iter().filter_map(|n| n.as_str().map(str::to_string)).collect();
                                client.subscribe(Subscription::of(&names));
                                hub.refresh();
                                let ack = json!({"type": "subscribed", "subscribe": names}).to_string();
                                if socket.send(Message::Text(ack.into())).await.is_err() {
                                    return;
                                }
                            }
                            _ => {
                                let e = json!({"type": "error", "error": "expected {\"subscribe\": [<measurement>, \"alerts\", \"events\", \"stats\"]}"}).to_string();
                                if socket.send(Message::Text(e.into())).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Message::Close(_) => return,
                    _ => {}
                }
            }
            _ = ping.tick() => {
                // A client silent for two intervals (no pong, no message) is gone.
                if heard.elapsed() > ping_every * 2 {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn sse(hub: Arc<Hub>, client: Arc<Client>) -> Response {
    let leave = Arc::new(Leave(hub.clone(), client.clone()));
    let events = futures_util::stream::unfold(
        (client, leave, Vec::<bytes::Bytes>::new(), 0usize),
        |(client, leave, mut pending, mut next)| async move {
            loop {
                if let Some(msg) = pending.get(next) {
                    next += 1;
                    // The hub's messages are JSON it serialized: UTF-8.
                    let e = Event::default().data(String::from_utf8_lossy(msg));
                    return Some((
                        Ok::<_, std::convert::Infallible>(e),
                        (client, leave, pending, next),
                    ));
                }
                pending.clear();
                next = 0;
                client.take(&mut pending, FLUSH_BYTES);
                if pending.is_empty() {
                    client.wake.notified().await;
                }
            }
        },
    );
    let keep_alive =
        KeepAlive::new().interval(hub.settings.ping_interval.max(Duration::from_secs(1)));
    Sse::new(events).keep_alive(keep_alive).into_response()
}
