//! A Prometheus-compatible subset under `/prometheus/api/v1/` (Grafana
//! appends `/api/v1/...` to the URL it is given): `query`, `query_range`
//! (GET, or a form POST), `labels`, `label/<name>/values`, `series` and
//! `status/buildinfo`, over the metric store. Metric names are
//! `<measurement>_<field>`, tags are labels. Refusals have Prometheus's
//! error shape, naming what is not supported.

#![allow(
    clippy::result_large_err,
    reason = "helpers of handlers return the refusal itself, built once per refused request"
)]

use super::ApiState;
use crate::store::promql::{self, INSTANT_STEP, Sample};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};
use std::collections::BTreeSet;

fn prom_error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"status": "error", "errorType": kind, "error": message.into()})),
    )
        .into_response()
}

fn bad_data(message: impl Into<String>) -> Response {
    prom_error(StatusCode::BAD_REQUEST, "bad_data", message)
}

fn success(data: Json) -> Response {
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

/// The parameters of a request: the query string and a form body.
fn params(query: Option<String>, body: &Bytes) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    out.extend(form_urlencoded::parse(body).into_owned());
    out
}

fn param<'a>(p: &'a [(String, String)], key: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A Prometheus time: Unix seconds (with a fraction) or RFC 3339; ms.
fn time(p: &[(String, String)], key: &str) -> Result<Option<i64>, Response> {
    let Some(v) = param(p, key) else {
        return Ok(None);
    };
    if let Ok(secs) = v.parse::<f64>() {
        return Ok(Some((secs * 1000.0).round() as i64));
    }
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map(|t| Some((t.unix_timestamp_nanos() / 1_000_000) as i64))
        .map_err(|_| {
            bad_data(format!(
                "invalid parameter \"{key}\": cannot parse \"{v}\" to a valid timestamp"
            ))
        })
}

/// A Prometheus duration: seconds (with a fraction) or `30s`, `5m`...; ms.
fn duration(v: &str) -> Option<i64> {
    if let Ok(secs) = v.parse::<f64>() {
        return Some((secs * 1000.0).round() as i64);
    }
    humantime::parse_duration(v)
        .ok()
        .map(|d| d.as_millis() as i64)
}

fn store_or_error(s: &ApiState) -> Result<&std::sync::Arc<crate::store::Store>, Response> {
    s.store.as_ref().ok_or_else(|| {
        prom_error(
            StatusCode::NOT_FOUND,
            "unavailable",
            "the metric store is off ([store] enabled = false)",
        )
    })
}

fn secs(ms: i64) -> Json {
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        json!(ms as f64 / 1000.0)
    }
}

fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

/// `query` and `query_range`.
pub(super) async fn query(
    State(s): State<ApiState>,
    Path(kind): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = super::query::read_gate(&s, &headers) {
        return r;
    }
    let store = match store_or_error(&s) {
        Ok(st) => st.clone(),
        Err(r) => return r,
    };
    let p = params(q, &body);
    let Some(expr) = param(&p, "query").map(str::to_string) else {
        return bad_data("invalid parameter \"query\": missing");
    };
    let now = crate::event::now_ms();
    let (start, end, step, instant) = match kind.as_str() {
        "query" => {
            let t = match time(&p, "time") {
                Ok(t) => t.unwrap_or(now),
                Err(r) => return r,
            };
            let step = param(&p, "step").and_then(duration).unwrap_or(INSTANT_STEP);
            (t, t, step, true)
        }
        "query_range" => {
            let (start, end) = match (time(&p, "start"), time(&p, "end")) {
                (Ok(Some(a)), Ok(Some(b))) => (a, b),
                (Err(r), _) | (_, Err(r)) => return r,
                _ => return bad_data("invalid parameter \"start\"/\"end\": both are required"),
            };
            let Some(step) = param(&p, "step").and_then(duration).filter(|s| *s > 0) else {
                return bad_data("invalid parameter \"step\": a positive duration is required");
            };
            if end < start {
                return bad_data(
                    "invalid parameter \"end\": end timestamp must not be before start time",
                );
            }
            if (end - start) / step > 11_000 {
                return bad_data(
                    "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
                );
            }
            (start, end, step, false)
        }
        other => {
            return prom_error(
                StatusCode::NOT_FOUND,
                "bad_data",
                format!(
                    "`/api/v1/{other}` is not supported (query, query_range, labels, label/<name>/values, series, status/buildinfo are)"
                ),
            );
        }
    };
    let result =
        tokio::task::spawn_blocking(move || promql::eval(&store.read(), &expr, start, end, step))
            .await;
    let samples: Vec<Sample> = match result {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return bad_data(e),
        Err(e) => return prom_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    };
    if instant {
        let result: Vec<Json> = samples
            .into_iter()
            .filter_map(|s| {
                let (t, v) = *s.values.last()?;
                Some(json!({"metric": s.labels, "value": [secs(t), value(v)]}))
            })
            .collect();
        success(json!({"resultType": "vector", "result": result}))
    } else {
        let result: Vec<Json> = samples
            .into_iter()
            .map(|s| {
                let values: Vec<Json> = s
                    .values
                    .iter()
                    .map(|(t, v)| json!([secs(*t), value(*v)]))
                    .collect();
                json!({"metric": s.labels, "values": values})
            })
            .collect();
        success(json!({"resultType": "matrix", "result": result}))
    }
}

/// A series as the label APIs list it: its metric name and tags.
type Listed = (String, Vec<(String, String)>);

/// Every series with raw points, filtered by `match[]` selectors.
fn series_list(s: &ApiState, p: &[(String, String)]) -> Result<Vec<Listed>, Response> {
    let store = store_or_error(s)?;
    let selectors: Vec<_> = p
        .iter()
        .filter(|(k, _)| k == "match[]")
        .map(|(_, v)| promql::selector(v).map_err(bad_data))
        .collect::<Result<_, _>>()?;
    let d = store.read();
    let mut out = Vec::new();
    for (measurement, m) in &d.measurements {
        for series in &m.series {
            for (field, col) in &series.fields {
                if col.ts.is_empty() {
                    continue; // rolled up only: not a Prometheus series
                }
                let name = format!("{measurement}_{field}");
                if selectors.is_empty()
                    || selectors
                        .iter()
                        .any(|vs| promql::selects(vs, &name, &series.tags))
                {
                    out.push((name, series.tags.clone()));
                }
            }
        }
    }
    Ok(out)
}

pub(super) async fn labels(
    State(s): State<ApiState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = super::query::read_gate(&s, &headers) {
        return r;
    }
    let p = params(q, &body);
    match series_list(&s, &p) {
        Ok(list) => {
            let mut names: BTreeSet<String> = list
                .iter()
                .flat_map(|(_, t)| t.iter().map(|(k, _)| k.clone()))
                .collect();
            if !list.is_empty() {
                names.insert("__name__".into());
            }
            success(json!(names))
        }
        Err(r) => r,
    }
}

pub(super) async fn label_values(
    State(s): State<ApiState>,
    Path(label): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = super::query::read_gate(&s, &headers) {
        return r;
    }
    let p = params(q, &body);
    match series_list(&s, &p) {
        Ok(list) => {
            let values: BTreeSet<String> = list
                .iter()
                .filter_map(|(name, tags)| {
                    if label == "__name__" {
                        Some(name.clone())
                    } else {
                        tags.iter()
                            .find(|(k, _)| *k == label)
                            .map(|(_, v)| v.clone())
                    }
                })
                .collect();
            success(json!(values))
        }
        Err(r) => r,
    }
}

pub(super) async fn series(
    State(s): State<ApiState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = super::query::read_gate(&s, &headers) {
        return r;
    }
    let p = params(q, &body);
    if !p.iter().any(|(k, _)| k == "match[]") {
        return bad_data("no match[] parameter provided");
    }
    match series_list(&s, &p) {
        Ok(list) => {
            let out: Vec<Json> = list
                .into_iter()
                .map(|(name, tags)| {
                    let mut m: serde_json::Map<String, Json> = tags
                        .into_iter()
                        .map(|(k, v)| (k, Json::String(v)))
                        .collect();
                    m.insert("__name__".into(), Json::String(name));
                    Json::Object(m)
                })
                .collect();
            success(json!(out))
        }
        Err(r) => r,
    }
}

pub(super) async fn buildinfo() -> Response {
    success(json!({
        "version": "2.40.0",
        "revision": env!("CARGO_PKG_VERSION"),
        "branch": "nexuspipe",
        "buildUser": "nexuspipe",
        "buildDate": "",
        "goVersion": "",
    }))
}
