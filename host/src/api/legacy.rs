//! `POST /event`: the payloads existing trackers send, normalized to the
//! canonical event. Known aliases map to canonical fields; anything else
//! becomes a property. For example
//! `{"event":"add_to_cart","userId":"u","url":"/p"}` and
//! `{"site_id":"s","event_type":"page_view","path":"/home","user_id":"u"}`.

use super::ApiState;
use super::ingest::{IngestParams, ingest};
use crate::event::EventError;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Map, Value as Json};
use std::net::SocketAddr;

/// Where a legacy key goes in the canonical event.
fn canonical(key: &str) -> Option<(&'static str, Option<&'static str>)> {
    Some(match key {
        "event" | "event_type" | "eventType" | "type" => ("event_type", None),
        "event_id" | "eventId" | "message_id" | "messageId" => ("event_id", None),
        "timestamp" | "ts" | "time" | "sent_at" => ("timestamp", None),
        "user_id" | "userId" | "uid" => ("user_id", None),
        "session_id" | "sessionId" | "sid" => ("session_id", None),
        "ip" | "ip_address" | "ipAddress" => ("metadata", Some("ip_address")),
        "user_agent" | "userAgent" | "ua" => ("metadata", Some("user_agent")),
        "platform" => ("metadata", Some("platform")),
        "url" | "page_url" | "pageUrl" | "href" => ("metadata", Some("url")),
        "referrer" | "referer" => ("metadata", Some("referrer")),
        _ => return None,
    })
}

/// Rewrites a legacy payload into the canonical JSON shape.
pub fn normalize(v: Json) -> Result<Json, EventError> {
    let Json::Object(obj) = v else {
        return Err(EventError {
            field: String::new(),
            message: "an event must be a JSON object".into(),
            kind: crate::event::ErrorKind::Invalid,
        });
    };
    let mut out = Map::new();
    let mut props = Map::new();
    let mut metadata = Map::new();
    for (k, v) in obj {
        match (k.as_str(), canonical(&k)) {
            ("properties" | "props", _) => match v {
                Json::Object(p) => props.extend(p),
                Json::Null => {}
                other => {
                    props.insert(k, other);
                }
            },
            ("metadata" | "context", _) if v.is_object() => {
                if let Json::Object(m) = v {
                    for (mk, mv) in m {
                        match canonical(&mk) {
                            Some(("metadata", Some(field))) => {
                                metadata.insert(field.into(), mv);
                            }
                            _ => {
                                props.insert(mk, mv);
                            }
                        }
                    }
                }
            }
            (_, Some(("metadata", Some(field)))) => {
                metadata.insert(field.into(), v);
            }
            (_, Some((field, _))) => {
                out.insert(field.into(), v);
            }
            (_, None) => {
                props.insert(k, v);
            }
        }
    }
    out.insert("properties".into(), Json::Object(props));
    out.insert("metadata".into(), Json::Object(metadata));
    Ok(Json::Object(out))
}

pub(super) async fn post_event(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<IngestParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(state, peer, params, headers, body, Some(normalize)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventDefaults, from_json};
    use crate::runtime::Event;
    use serde_json::json;

    fn convert(v: Json, d: &EventDefaults<'_>) -> Result<Event, EventError> {
        from_json(normalize(v)?, d)
    }

    #[test]
    fn normalizes_known_tracker_payloads() {
        let d = EventDefaults::default();
        let e = convert(
            json!({"event":"add_to_cart","userId":"user-delta","url":"/products/widget-pro-max-0001"}),
            &d,
        )
        .unwrap();
        assert_eq!(e.event_type, "add_to_cart");
        assert_eq!(e.user_id.as_deref(), Some("user-delta"));
        assert_eq!(
            e.metadata.url.as_deref(),
            Some("/products/widget-pro-max-0001")
        );
        let e = convert(
            json!({"site_id":"site123","event_type":"page_view","path":"/home","user_id":"user1"}),
            &d,
        )
        .unwrap();
        assert_eq!(e.event_type, "page_view");
        let mut keys: Vec<&str> = e.properties.iter().map(|p| p.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["path", "site_id"], "unknown fields go to properties");
        let err = convert(json!({"userId": "u"}), &d).unwrap_err();
        assert_eq!(err.field, "event_type");
    }
}
