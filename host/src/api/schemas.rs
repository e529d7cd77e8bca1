//! `/v1/schemas`: a JSON Schema (draft 2020-12) per event type, checked
//! against each new event's `properties` at ingest (see [`crate::schema`]).
//! Reads are open (or behind `read_token`); changes need the admin token.
//!
//! | status | `reason`         | when                                                  |
//! |--------|------------------|-------------------------------------------------------|
//! | 400    | `bad_request`    | the body is not JSON                                  |
//! | 404    | `not_found`      | no schema for that event type                         |
//! | 400    | `bad_event_type` | an event type of more than 256 characters             |
//! | 413    | `too_large`      | a schema over 256 KiB (body over `http.max_body`)    |
//! | 422    | `invalid_schema` | not a JSON Schema this host compiles (a wrong keyword value, a remote `$ref`) |
//! | 500    | `store_failed`   | the data dir could not be written                     |
//! | 503    | `publish_failed` | with Kafka: the plugins topic did not take it         |

use super::admin::{Access, access, gate, refuse};
use super::{ApiState, BodyError, read_limited};
use crate::schema::{SchemaError, SchemaVersion};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};

fn version_json(event_type: &str, v: &SchemaVersion) -> Json {
    json!({
        "event_type": event_type,
        "version": v.version,
        "schema": v.schema,
        "at": crate::event::format_timestamp(v.at_ms as i64),
        "source": v.source,
    })
}

fn readable(s: &ApiState, headers: &HeaderMap) -> Option<Response> {
    match access(s, headers) {
        Access::Refused(r) => Some(r),
        Access::Admin | Access::Read => None,
    }
}

/// `GET /v1/schemas`: the current schema of every checked event type.
pub(super) async fn list(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Some(r) = readable(&s, &headers) {
        return r;
    }
    let schemas = s.manager.schemas();
    let current: Vec<Json> = schemas
        .versions()
        .iter()
        .filter_map(|(t, list)| {
            let (v, _) = crate::schema::latest(list)?;
            Some(version_json(t, v))
        })
        .collect();
    let on_invalid = match schemas.on_invalid() {
        crate::config::OnInvalid::Reject => "reject",
        crate::config::OnInvalid::DeadLetter => "dead_letter",
    };
    axum::Json(json!({ "on_invalid": on_invalid, "schemas": current })).into_response()
}

fn not_found(event_type: &str) -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no schema for event type `{event_type}`"),
    )
}

/// `GET /v1/schemas/{event_type}`: its current schema.
pub(super) async fn get_one(
    State(s): State<ApiState>,
    Path(event_type): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = readable(&s, &headers) {
        return r;
    }
    match s.manager.schemas().current(&event_type) {
        Some(v) => axum::Json(version_json(&event_type, &v)).into_response(),
        None => not_found(&event_type),
    }
}

/// `GET /v1/schemas/{event_type}/versions`: every version, oldest first
/// (a removal is a version with `schema: null`).
pub(super) async fn versions(
    State(s): State<ApiState>,
    Path(event_type): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = readable(&s, &headers) {
        return r;
    }
    let list = s.manager.schemas().versions_of(&event_type);
    if list.is_empty() {
        return not_found(&event_type);
    }
    let versions: Vec<Json> = list.iter().map(|v| version_json(&event_type, v)).collect();
    axum::Json(json!({ "event_type": event_type, "versions": versions })).into_response()
}

/// `PUT /v1/schemas/{event_type}` with the schema as the body: its new
/// version, applied to the next request (`201`; `200` if it is the current
/// schema already).
pub(super) async fn put(
    State(s): State<ApiState>,
    Path(event_type): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(r) = gate(&s, &headers, None) {
        return r;
    }
    let bytes = match read_limited(body, s.max_body).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the schema is larger than http.max_body ({} bytes)",
                    s.max_body
                ),
            );
        }
        Err(BodyError::Broken(e)) => {
            return refuse(StatusCode::BAD_REQUEST, "bad_request", e);
        }
    };
    let schema: Json = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("schema of `{event_type}`: malformed JSON: {e}"),
            );
        }
    };
    change(s, event_type, Some(schema)).await
}

/// `DELETE /v1/schemas/{event_type}`: the type is no longer checked (the
/// removal is kept as a version).
pub(super) async fn delete(
    State(s): State<ApiState>,
    Path(event_type): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&s, &headers, None) {
        return r;
    }
    if s.manager.schemas().current(&event_type).is_none() {
        return not_found(&event_type);
    }
    change(s, event_type, None).await
}

async fn change(s: ApiState, event_type: String, schema: Option<Json>) -> Response {
    let manager = s.manager.clone();
    let t = event_type.clone();
    let done = tokio::task::spawn_blocking(move || manager.put_schema(&t, schema, "api")).await;
    let result = match done {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "interrupted",
                format!("schema of `{event_type}`: the change was interrupted: {e}"),
            );
        }
    };
    match result {
        Ok((v, created)) => {
            // A new version is created (201), but a removal answers as
            // DELETEs do.
            let status = if created && v.schema.is_some() {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut body = version_json(&event_type, &v);
            body["created"] = json!(created);
            (status, axum::Json(body)).into_response()
        }
        Err(e) => {
            let (status, reason) = match &e {
                SchemaError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_schema"),
                SchemaError::BadEventType(_) => (StatusCode::BAD_REQUEST, "bad_event_type"),
                SchemaError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
                SchemaError::Publish { .. } => (StatusCode::SERVICE_UNAVAILABLE, "publish_failed"),
                SchemaError::Store { .. } | SchemaError::File { .. } => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "store_failed")
                }
            };
            tracing::warn!(event_type, reason, "schema change refused: {e}");
            refuse(status, reason, e.to_string())
        }
    }
}
