//! The plugin management API (`/v1/plugins`), behind a bearer token.
//!
//! | status | `reason`          | when                                              |
//! |--------|-------------------|---------------------------------------------------|
//! | 400    | `invalid_name`    | the name has path separators, dots first, > 64 chars |
//! | 400    | `bad_request`     | a malformed query or multipart body               |
//! | 401    | `unauthorized`    | no `Authorization: Bearer` header                 |
//! | 403    | `forbidden`       | a wrong token                                     |
//! | 404    | `admin_disabled`  | no admin token configured                         |
//! | 404    | `not_found`       | no plugin of that name                            |
//! | 409    | `world_mismatch`  | the upload's world differs from the running one's |
//! | 409    | `state_rejected`  | the new version's `restore` refused the state     |
//! | 409    | `no_previous`     | rollback without a previous version               |
//! | 413    | `too_large`       | body over `http.max_plugin_size`                  |
//! | 415    | `not_a_component` | not Wasm, a core module, or an invalid component  |
//! | 422    | `unknown_world`   | a component exporting none of the worlds          |
//! | 422    | `config_rejected` | the plugin's `init` refused the config            |
//! | 422    | `init_failed`     | instantiation or `init` failed (trap, imports...) |
//! | 503    | `publish_failed`  | with Kafka: the plugins topic could not be written or read back |

use super::{ApiState, BodyError, drain, error, read_limited};
use crate::config::validate_plugin_name;
use crate::dataflow::SwapError;
use crate::live::{DeployError, DeployRequest, Source};
use crate::runtime::PluginError;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::time::Instant;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct SwapParams {
    /// The plugin's config (else a multipart `config` part, else the running version's).
    config: Option<String>,
    /// Start the new version empty instead of handing over the running state.
    #[serde(default)]
    reset_state: bool,
    /// Only check that the version would deploy (it loads, is the running
    /// world, its `init` takes the config); nothing changes.
    #[serde(default)]
    dry_run: bool,
}

pub(super) fn refuse(status: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    error(status, message, json!({ "reason": reason }))
}

/// The refusal of an admin request, if any: no admin token configured, a
/// missing or wrong bearer token (compared in constant time, as digests), or
/// an invalid plugin name.
pub(super) fn gate(s: &ApiState, headers: &HeaderMap, name: Option<&str>) -> Option<Response> {
    let Some(token) = &s.admin_token else {
        return Some(refuse(
            StatusCode::NOT_FOUND,
            "admin_disabled",
            "the admin API is disabled: set http.admin_token or NEXUSPIPE_ADMIN_TOKEN",
        ));
    };
    let Some(given) = super::bearer(headers) else {
        let mut r = refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <token>`",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return Some(r);
    };
    if !super::token_matches(given, token) {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the admin token is wrong",
        ));
    }
    let m = validate_plugin_name(name?).err()?;
    Some(refuse(
        StatusCode::BAD_REQUEST,
        "invalid_name",
        format!("invalid plugin name: {m}"),
    ))
}

/// The response for a refused change; the running version is untouched.
fn deploy_error(name: &str, e: DeployError) -> Response {
    let (status, reason) = match &e {
        DeployError::InvalidName(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
        DeployError::Plugin(p) => match p {
            PluginError::NotWasm | PluginError::CoreModule | PluginError::Compile(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_a_component")
            }
            PluginError::UnknownWorld { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_world"),
            PluginError::Config(_) => (StatusCode::UNPROCESSABLE_ENTITY, "config_rejected"),
            _ => (StatusCode::UNPROCESSABLE_ENTITY, "init_failed"),
        },
        DeployError::Swap(s) => match s {
            SwapError::StateRejected(_) | SwapError::Snapshot(_) => {
                (StatusCode::CONFLICT, "state_rejected")
            }
            SwapError::WorldMismatch { .. } => (StatusCode::CONFLICT, "world_mismatch"),
            SwapError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            SwapError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "stopped"),
        },
        DeployError::NoPrevious(_) => (StatusCode::CONFLICT, "no_previous"),
        DeployError::Store { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "store_failed"),
        DeployError::Publish(_) => (StatusCode::SERVICE_UNAVAILABLE, "publish_failed"),
    };
    tracing::warn!(plugin = name, reason, "plugin change refused: {e}");
    error(
        status,
        format!("plugin `{name}`: {e}"),
        json!({ "reason": reason, "plugin": name }),
    )
}

/// Runs a blocking manager call off the async threads.
async fn blocking<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T, DeployError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| deploy_error(name, e)),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("plugin `{name}`: the change was interrupted: {e}"),
            json!({}),
        )),
    }
}

/// Reading the pipeline is a read (open, or behind `read_token`), so the
/// dashboard shows it without the admin token; plugin configs (which may
/// hold secrets) only come with the admin token, but for alerters: their
/// rules are what the dashboard lists.
pub(super) enum Access {
    /// With the admin token: configs too.
    Admin,
    Read,
    Refused(Response),
}

pub(super) fn access(s: &ApiState, headers: &HeaderMap) -> Access {
    let admin = s
        .admin_token
        .as_ref()
        .zip(super::bearer(headers))
        .is_some_and(|(t, g)| super::token_matches(g, t));
    if admin {
        return Access::Admin;
    }
    match super::query::read_gate(s, headers) {
        Some(r) => Access::Refused(r),
        None => Access::Read,
    }
}

fn listed(s: &ApiState, p: crate::live::PluginInfo, config: bool) -> serde_json::Value {
    let show = config || p.world == crate::runtime::World::Alerter;
    let mut v = json!(p);
    if show && let Some((_, c, _)) = s.manager.running(&p.name) {
        v["config"] = json!(c);
    }
    v
}

pub(super) async fn list(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let config = match access(&s, &headers) {
        Access::Admin => true,
        Access::Read => false,
        Access::Refused(r) => return r,
    };
    let plugins: Vec<_> = s
        .manager
        .list()
        .into_iter()
        .map(|p| listed(&s, p, config))
        .collect();
    let mut body = json!({ "plugins": plugins });
    let processors = s.manager.processors();
    if !processors.is_empty() {
        body["processors"] = json!(processors);
    }
    axum::Json(body).into_response()
}

pub(super) async fn get_one(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let config = match access(&s, &headers) {
        Access::Admin => true,
        Access::Read => false,
        Access::Refused(r) => return r,
    };
    match s.manager.list().into_iter().find(|p| p.name == name) {
        Some(p) => axum::Json(listed(&s, p, config)).into_response(),
        None => refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no plugin named `{name}` in the pipeline"),
        ),
    }
}

pub(super) async fn put(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    params: Result<Query<SwapParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received = Instant::now();
    let (params, refusal) = match (gate(&s, &headers, Some(&name)), params) {
        (Some(r), _) => (None, Some(r)),
        (None, Ok(Query(p))) => (Some(p), None),
        (None, Err(e)) => (
            None,
            Some(refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                e.body_text(),
            )),
        ),
    };
    let (Some(params), None) = (params, refusal.as_ref()) else {
        drain(body, s.max_plugin_size).await;
        return refusal.expect("a refusal when there are no params");
    };
    let limit = s.max_plugin_size;
    let body = match read_limited(body, limit).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the upload is larger than the limit of {limit} bytes (http.max_plugin_size)"
                ),
            );
        }
        Err(BodyError::Broken(e)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("reading the upload: {e}"),
            );
        }
    };
    let (bytes, part_config) = match split_upload(&headers, body).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let request = DeployRequest {
        name: name.clone(),
        bytes: bytes.to_vec(),
        config: params.config.or(part_config),
        source: Source::Upload,
        reset_state: params.reset_state,
        settings: None,
        path: None,
        received,
    };
    let manager = s.manager.clone();
    if params.dry_run {
        return match blocking(&name, move || manager.check(request)).await {
            Ok(c) => axum::Json(c).into_response(),
            Err(r) => r,
        };
    }
    match blocking(&name, move || manager.deploy(request)).await {
        Ok(d) => axum::Json(d).into_response(),
        Err(r) => r,
    }
}

/// The component and the optional config of an upload: the raw body, or the
/// `component` and `config` parts of a `multipart/form-data` body.
async fn split_upload(
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(Bytes, Option<String>), Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("multipart/") {
        return Ok((body, None));
    }
    let bad = |m: String| refuse(StatusCode::BAD_REQUEST, "bad_request", m);
    let boundary =
        multer::parse_boundary(content_type).map_err(|e| bad(format!("Content-Type: {e}")))?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let (mut component, mut config) = (None, None);
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| bad(format!("multipart body: {e}")))?
    {
        let part = field.name().unwrap_or("").to_string();
        let data = field
            .bytes()
            .await
            .map_err(|e| bad(format!("multipart part `{part}`: {e}")))?;
        match part.as_str() {
            "component" => component = Some(data),
            "config" => {
                let text = String::from_utf8(data.to_vec())
                    .map_err(|_| bad("multipart part `config` is not UTF-8 text".into()))?;
                config = Some(text);
            }
            other => {
                return Err(bad(format!(
                    "unexpected multipart part `{other}` (expected `component` and `config`)"
                )));
            }
        }
    }
    // A `config` part alone: the running component with a new config.
    let component = match (component, &config) {
        (Some(c), _) => c,
        (None, Some(_)) => Bytes::new(),
        (None, None) => {
            return Err(bad(
                "multipart body has neither a `component` nor a `config` part".into(),
            ));
        }
    };
    Ok((component, config))
}

pub(super) async fn delete(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&s, &headers, Some(&name)) {
        return r;
    }
    let manager = s.manager.clone();
    let n = name.clone();
    match blocking(&name, move || manager.remove(&n)).await {
        Ok(version) => {
            axum::Json(json!({ "name": name, "removed_version": version })).into_response()
        }
        Err(r) => r,
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RollbackParams {
    #[serde(default)]
    reset_state: bool,
}

pub(super) async fn rollback(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    params: Result<Query<RollbackParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&s, &headers, Some(&name)) {
        return r;
    }
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "bad_request", e.body_text()),
    };
    let manager = s.manager.clone();
    let n = name.clone();
    match blocking(&name, move || manager.rollback(&n, params.reset_state)).await {
        Ok(d) => axum::Json(d).into_response(),
        Err(r) => r,
    }
}
