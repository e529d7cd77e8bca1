//! The read side: `GET /v1/metrics` (the catalog, stored points, rolled-up
//! buckets), `GET /v1/alerts`, and `GET /stats` for existing clients of
//! that route. Open on loopback by default; `[http] read_token` makes reads
//! need `Authorization: Bearer` (the admin token works too).

#![allow(
    clippy::result_large_err,
    reason = "helpers of handlers return the refusal itself, built once per refused request"
)]

use super::{ApiState, error};
use crate::event::{format_timestamp, parse_timestamp};
use crate::store::{Agg, MetricQuery, QueryError, SeriesOut, Store, Val};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A bad parameter: 400 naming it and what is allowed.
pub(super) fn bad(parameter: &str, message: impl Into<String>, allowed: Json) -> Response {
    let mut extra = json!({ "parameter": parameter });
    if !allowed.is_null() {
        extra["allowed"] = allowed;
    }
    error(StatusCode::BAD_REQUEST, message, extra)
}

/// The refusal of a read, if any: with a read token set, a bearer token
/// that is neither it nor the admin token.
pub(super) fn read_gate(s: &ApiState, headers: &HeaderMap) -> Option<Response> {
    read_gate_for(s, super::bearer(headers))
}

/// `read_gate` for a token given some other way than `Authorization`.
pub(super) fn read_gate_for(s: &ApiState, given: Option<&str>) -> Option<Response> {
    let token = s.read_token.as_ref()?;
    let ok = given.is_some_and(|g| {
        super::token_matches(g, token)
            || s.admin_token
                .as_ref()
                .is_some_and(|a| super::token_matches(g, a))
    });
    if ok {
        return None;
    }
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "reads need `Authorization: Bearer <read token>` (http.read_token)",
        json!({ "reason": "unauthorized" }),
    );
    r.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    Some(r)
}

/// 400 naming the first parameter not in `allowed`, listing them.
fn only_known(params: &HashMap<String, String>, allowed: &[&str]) -> Result<(), Response> {
    match params.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(bad(k, format!("unknown parameter `{k}`"), json!(allowed))),
        None => Ok(()),
    }
}

/// The store, or 404 when it is off.
fn store(s: &ApiState) -> Result<&Arc<Store>, Response> {
    s.store.as_ref().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "the metric store is off ([store] enabled = false)",
            json!({}),
        )
    })
}

/// A time parameter: RFC 3339 or epoch milliseconds.
fn time_param(params: &HashMap<String, String>, key: &str) -> Result<Option<i64>, Response> {
    let Some(v) = params.get(key) else {
        return Ok(None);
    };
    let as_json = match v.parse::<i64>() {
        Ok(n) => Json::from(n),
        Err(_) => Json::String(v.clone()),
    };
    parse_timestamp(&as_json).map(Some).map_err(|m| {
        bad(
            key,
            format!("{key}: {m}"),
            json!("RFC 3339 or epoch milliseconds"),
        )
    })
}

/// A duration parameter: `30s`, `5m`, `1h`, `1d` or milliseconds.
fn duration_param(key: &str, v: &str) -> Result<i64, Response> {
    let ms = match v.parse::<i64>() {
        Ok(n) => Ok(n),
        Err(_) => humantime::parse_duration(v)
            .map(|d| d.as_millis() as i64)
            .map_err(|e| e.to_string()),
    };
    match ms {
        Ok(n) if n > 0 => Ok(n),
        Ok(_) => Err(bad(key, format!("{key} must be positive"), Json::Null)),
        Err(e) => Err(bad(
            key,
            format!("{key}: `{v}` is not a duration ({e})"),
            json!("e.g. 30s, 5m, 1h, 1d, or milliseconds"),
        )),
    }
}

/// The event time queries end at by default: the watermark, else now.
fn now_event_time(s: &ApiState) -> i64 {
    match s
        .metrics
        .watermark_ms
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        i64::MIN => crate::event::now_ms(),
        wm => wm,
    }
}

fn query_error(q: &MetricQuery, e: QueryError) -> Response {
    match e {
        QueryError::UnknownMetric { known } => bad(
            "metric",
            format!("no measurement `{}` in the store", q.metric),
            json!(known),
        ),
        QueryError::UnknownField { field, known } => bad(
            "field",
            format!("measurement `{}` has no field `{field}`", q.metric),
            json!(known),
        ),
        QueryError::UnknownTag { tag, known } => bad(
            &tag,
            format!("measurement `{}` has no tag `{tag}`", q.metric),
            json!(known),
        ),
    }
}

/// Keys of `/v1/metrics` that are not tag filters.
const METRIC_KEYS: [&str; 7] = [
    "metric",
    "field",
    "group_by",
    "start_time",
    "end_time",
    "window",
    "agg",
];

/// Reads a metric query from its parameters (`/v1/metrics`, `/api/v1/metrics`).
fn metric_query(s: &ApiState, params: &HashMap<String, String>) -> Result<MetricQuery, Response> {
    let metric = params.get("metric").cloned().unwrap_or_default();
    let end =
        time_param(params, "end_time")?.unwrap_or_else(|| now_event_time(s).saturating_add(1));
    let start = time_param(params, "start_time")?.unwrap_or(end.saturating_sub(3_600_000));
    if start >= end {
        return Err(bad(
            "start_time",
            format!(
                "start_time ({}) must be before end_time ({})",
                format_timestamp(start),
                format_timestamp(end)
            ),
            Json::Null,
        ));
    }
    let agg = match params.get("agg") {
        None => None,
        Some(a) => Some(Agg::parse(a).ok_or_else(|| {
            bad(
                "agg",
                format!("agg `{a}` is not an aggregate"),
                json!(Agg::ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>()),
            )
        })?),
    };
    let window = match (params.get("window"), agg) {
        (Some(w), Some(agg)) => Some((duration_param("window", w)?, agg)),
        (Some(_), None) => {
            return Err(bad(
                "agg",
                "window needs agg: say how points are rolled up into each bucket (a distinct count or a ratio must not be summed behind your back)",
                json!(Agg::ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>()),
            ));
        }
        (None, Some(_)) => {
            return Err(bad(
                "window",
                "agg needs window (the bucket size)",
                Json::Null,
            ));
        }
        (None, None) => None,
    };
    let group_by: Vec<String> = params
        .get("group_by")
        .map(|g| {
            g.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if !group_by.is_empty() && window.is_none() {
        return Err(bad(
            "group_by",
            "group_by aggregates series together: give window and agg too",
            Json::Null,
        ));
    }
    let mut filters: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !METRIC_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    filters.sort();
    Ok(MetricQuery {
        metric,
        field: params.get("field").cloned(),
        group_by,
        filters,
        start,
        end,
        window,
    })
}

fn format_window(ms: i64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms as u64)).to_string()
}

/// `GET /v1/metrics`: the catalog without `metric`, else a query.
pub(super) async fn metrics(
    State(s): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = read_gate(&s, &headers) {
        return r;
    }
    let store = match store(&s) {
        Ok(st) => st.clone(),
        Err(r) => return r,
    };
    if !params.contains_key("metric") {
        let unknown: Vec<&String> = params.keys().collect();
        if !unknown.is_empty() {
            return bad(
                unknown[0],
                format!(
                    "`{}` needs `metric` (without it, the catalog is listed)",
                    unknown[0]
                ),
                Json::Null,
            );
        }
        return axum::Json(catalog(&store)).into_response();
    }
    let q = match metric_query(&s, &params) {
        Ok(q) => q,
        Err(r) => return r,
    };
    // Large answers are built off the async threads, written straight from
    // the store's columns while the read lock is held (the store's writer
    // has a queue of its own; the engine never waits for it).
    let (start_tx, start_rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let d = store.read();
        match d.query(&q) {
            Ok(series) => answer_json(&q, series, start_tx),
            Err(e) => drop(start_tx.send(Answer::Whole(query_error(&q, e)))),
        }
    });
    match start_rx.await {
        Ok(Answer::Whole(r)) => r,
        Ok(Answer::Parts { head, parts }) => {
            // Parts go out in order as they are encoded, so the transfer of
            // the first overlaps the encoding of the rest. An encoder that
            // died ends the body early: the client sees a cut answer.
            use futures_util::StreamExt;
            let parts = futures_util::stream::iter(parts).then(|rx| async move {
                rx.await
                    .map(bytes::Bytes::from)
                    .map_err(|_| std::io::Error::other("the answer's encoder stopped"))
            });
            let body = futures_util::stream::iter([Ok(bytes::Bytes::from(head))])
                .chain(parts)
                .chain(futures_util::stream::iter([Ok(bytes::Bytes::from_static(
                    b"]}",
                ))]));
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                axum::body::Body::from_stream(body),
            )
                .into_response()
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the query failed".to_string(),
            json!({}),
        ),
    }
}

/// How an answer starts: whole (small, errors), or its head and the
/// encoded parts of its series as they come.
enum Answer {
    Whole(Response),
    Parts {
        head: Vec<u8>,
        parts: Vec<tokio::sync::oneshot::Receiver<Vec<u8>>>,
    },
}

fn answer_json(
    q: &MetricQuery,
    series: Vec<SeriesOut<'_>>,
    start: tokio::sync::oneshot::Sender<Answer>,
) {
    #[derive(serde::Serialize)]
    struct Head<'a> {
        metric: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        field: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        window: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        agg: Option<Agg>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        group_by: &'a Vec<String>,
        start_time: String,
        end_time: String,
        series: [(); 0],
    }
    let sizes: Vec<usize> = series.iter().map(SeriesOut::json_size).collect();
    let size: usize = 256 + sizes.iter().sum::<usize>();
    let mut head = Vec::with_capacity(256);
    let written = serde_json::to_writer(
        &mut head,
        &Head {
            metric: &q.metric,
            field: q.field.as_deref(),
            window: q.window.map(|(w, _)| format_window(w)),
            agg: q.window.map(|(_, a)| a),
            group_by: &q.group_by,
            start_time: format_timestamp(q.start),
            end_time: format_timestamp(q.end),
            series: [],
        },
    );
    if let Err(e) = written {
        let r = error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the answer: {e}"),
            json!({}),
        );
        drop(start.send(Answer::Whole(r)));
        return;
    }
    // `series` is the last member: reopen its empty list.
    head.truncate(head.len() - "]}".len());
    let encode = |range: std::ops::Range<usize>, out: &mut Vec<u8>| {
        for (i, s) in series[range.clone()].iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            s.write_json(out);
        }
    };
    if size <= 4 << 20 {
        let mut body = head;
        body.reserve(size);
        encode(0..series.len(), &mut body);
        body.extend_from_slice(b"]}");
        let r = (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        drop(start.send(Answer::Whole(r)));
        return;
    }
    // A large answer (a day of raw points for a thousand series is 23 MB)
    // is encoded in parts on every core, each sent when it is done.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let bounds = split_by_size(&sizes, threads * 4);
    let (senders, receivers): (Vec<_>, Vec<_>) = bounds
        .iter()
        .map(|_| tokio::sync::oneshot::channel())
        .unzip();
    if start
        .send(Answer::Parts {
            head,
            parts: receivers,
        })
        .is_err()
    {
        return; // the client is gone
    }
    // Each thread takes the next part still to do.
    let todo = std::sync::Mutex::new(bounds.into_iter().zip(senders));
    let work = || {
        loop {
            let Some((range, tx)) = todo.lock().ok().and_then(|mut t| t.next()) else {
                break;
            };
            let mut out = Vec::with_capacity(sizes[range.clone()].iter().sum::<usize>() + 1);
            if range.start > 0 {
                out.push(b',');
            }
            encode(range.clone(), &mut out);
            if tx.send(out).is_err() {
                break; // the client is gone: stop encoding
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(work);
        }
        work();
    });
}

/// Splits `0..sizes.len()` into at most `parts` consecutive ranges of
/// about equal total size.
fn split_by_size(sizes: &[usize], parts: usize) -> Vec<std::ops::Range<usize>> {
    let total: usize = sizes.iter().sum();
    let per = total.div_ceil(parts.max(1)).max(1);
    let (mut out, mut start, mut acc) = (Vec::new(), 0, 0);
    for (i, s) in sizes.iter().enumerate() {
        acc += s;
        if acc >= per && out.len() + 1 < parts {
            out.push(start..i + 1);
            start = i + 1;
            acc = 0;
        }
    }
    if start < sizes.len() || out.is_empty() {
        out.push(start..sizes.len());
    }
    out
}

fn catalog(store: &Store) -> Json {
    let settings = store.settings();
    let d = store.read();
    let entries: Vec<Json> = d
        .catalog()
        .into_iter()
        .map(|c| {
            json!({
                "measurement": c.measurement,
                "fields": c.fields,
                "tags": c.tags,
                "series": c.series,
                "oldest": c.oldest.map(format_timestamp),
                "newest": c.newest.map(format_timestamp),
            })
        })
        .collect();
    json!({
        "measurements": entries,
        "series": d.series_count,
        "raw": {
            "resolution": "as emitted",
            "retention": format_window(settings.retention),
        },
        "rollups": {
            "resolution": format_window(settings.rollup_resolution),
            "retention": format_window(settings.rollup_retention),
            "keeps": ["sum", "count", "min", "max", "last"],
        },
    })
}

/// `GET /v1/alerts`: history (newest first) and what is firing now.
pub(super) async fn alerts(
    State(s): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = read_gate(&s, &headers) {
        return r;
    }
    let store = match store(&s) {
        Ok(st) => st,
        Err(r) => return r,
    };
    if let Err(r) = only_known(
        &params,
        &["status", "rule", "start_time", "end_time", "limit"],
    ) {
        return r;
    }
    let status = params.get("status").map(String::as_str);
    if let Some(st) = status
        && !["firing", "resolved"].contains(&st)
    {
        return bad(
            "status",
            format!("status `{st}` is not one"),
            json!(["firing", "resolved"]),
        );
    }
    let (start, end) = match (
        time_param(&params, "start_time"),
        time_param(&params, "end_time"),
    ) {
        (Ok(a), Ok(b)) => (a.unwrap_or(i64::MIN), b.unwrap_or(i64::MAX)),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => 1_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => return bad("limit", "limit must be a positive number", Json::Null),
    };
    let rule = params.get("rule").map(String::as_str);
    let d = store.read();
    let history = d.alerts(status, rule, start, end, limit);
    let firing = d.firing(rule);
    axum::Json(json!({ "alerts": history, "firing": firing })).into_response()
}

/// `GET /stats?site_id=`: events by type, page views, unique users and top
/// pages of a site over a range (default: the current UTC day of event time).
pub(super) async fn stats(
    State(s): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = read_gate(&s, &headers) {
        return r;
    }
    let store = match store(&s) {
        Ok(st) => st,
        Err(r) => return r,
    };
    if let Err(r) = only_known(&params, &["site_id", "start_time", "end_time"]) {
        return r;
    }
    let Some(site) = params.get("site_id").cloned() else {
        return bad("site_id", "site_id is required", Json::Null);
    };
    const DAY: i64 = 86_400_000;
    let today = {
        let t = now_event_time(&s);
        t - t.rem_euclid(DAY)
    };
    let (start, end) = match (
        time_param(&params, "start_time"),
        time_param(&params, "end_time"),
    ) {
        (Ok(a), Ok(b)) => (a.unwrap_or(today), b.unwrap_or(today + DAY)),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let d = store.read();
    // One bucket over the whole range: window i64::MAX puts every
    // timestamp since the epoch in bucket 0.
    let total = |metric: &str, field: &str, group_by: &[&str], window: i64| -> Vec<SeriesOut<'_>> {
        d.query(&MetricQuery {
            metric: metric.into(),
            field: Some(field.into()),
            group_by: group_by.iter().map(|g| g.to_string()).collect(),
            filters: vec![("site_id".into(), site.clone())],
            start,
            end,
            window: Some((window, Agg::Sum)),
        })
        .unwrap_or_default()
    };
    let sum = |s: &SeriesOut, field: &str| -> f64 {
        s.fields
            .get(field)
            .map(|v| v.iter().flatten().filter_map(Val::num).sum())
            .unwrap_or(0.0)
    };
    let events: BTreeMap<String, f64> = total("events", "count", &["event_type"], i64::MAX)
        .iter()
        .filter_map(|s| Some((s.tags.get("event_type")?.clone(), sum(s, "count"))))
        .collect();
    let page_views: f64 = total("page_views", "count", &[], i64::MAX)
        .iter()
        .map(|s| sum(s, "count"))
        .sum();
    // Distinct users per UTC day (a user of two days counts on each).
    let unique_users: f64 = total("daily_users", "users", &[], DAY)
        .iter()
        .map(|s| sum(s, "users"))
        .sum();
    let mut pages: Vec<(String, f64)> = total("page_views", "count", &["path"], i64::MAX)
        .iter()
        .filter_map(|s| Some((s.tags.get("path")?.clone(), sum(s, "count"))))
        .collect();
    pages.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    pages.truncate(10);
    let int = |f: f64| f as i64;
    axum::Json(json!({
        "site_id": site,
        "start_time": format_timestamp(start),
        "end_time": format_timestamp(end),
        "events": events.into_iter().map(|(k, v)| (k, json!(int(v)))).collect::<serde_json::Map<_, _>>(),
        "page_views": int(page_views),
        "unique_users": int(unique_users),
        "top_pages": pages.into_iter().map(|(path, n)| json!({"path": path, "views": int(n)})).collect::<Vec<_>>(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::{Answer, answer_json, split_by_size};
    use crate::store::{MetricQuery, SeriesOut, Val, Values};
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    /// An answer over the size where it is encoded in parts on every core
    /// reads back as the same JSON as one serde encoding of its series.
    #[test]
    fn a_large_answer_comes_in_order_as_the_series_are() {
        let ts: Vec<i64> = (0..1440).map(|m| 1_767_225_600_000 + m * 60_000).collect();
        let vals: Vec<Vec<Val>> = (0..400)
            .map(|s| (0..1440).map(|m| Val::F((s * m) as f64 / 7.0)).collect())
            .collect();
        let series: Vec<SeriesOut> = vals
            .iter()
            .enumerate()
            .map(|(s, v)| SeriesOut {
                tags: BTreeMap::from([("path".to_string(), format!("/p{s}"))]),
                timestamps: Cow::Borrowed(&ts),
                fields: BTreeMap::from([("count".to_string(), Values::Every(v))]),
            })
            .collect();
        let expected = serde_json::to_value(&series).unwrap();
        let q = MetricQuery {
            metric: "page_views".into(),
            field: None,
            group_by: Vec::new(),
            filters: Vec::new(),
            start: 0,
            end: 1,
            window: None,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| answer_json(&q, series.clone(), tx));
            let Ok(Answer::Parts { head, parts }) = rx.blocking_recv() else {
                panic!("a 10 MB answer is sent in parts");
            };
            assert!(parts.len() > 1);
            let mut body = head;
            for p in parts {
                body.extend_from_slice(&p.blocking_recv().unwrap());
            }
            body.extend_from_slice(b"]}");
            let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(got["metric"], "page_views");
            assert_eq!(got["series"], expected);
        });
    }

    #[test]
    fn split_by_size_covers_every_series_once_in_order() {
        for (sizes, parts) in [
            (vec![], 2),
            (vec![5], 2),
            (vec![1, 1, 1, 1], 2),
            (vec![10, 1, 1, 1], 2),
            (vec![1, 2, 3, 4, 5, 6, 7], 3),
            (vec![3; 1000], 4),
        ] {
            let ranges = split_by_size(&sizes, parts);
            assert!(ranges.len() <= parts.max(1), "{sizes:?} {ranges:?}");
            let flat: Vec<usize> = ranges.iter().flat_map(|r| r.clone()).collect();
            assert_eq!(
                flat,
                (0..sizes.len()).collect::<Vec<_>>(),
                "{sizes:?} {ranges:?}"
            );
        }
        // Equal sizes split evenly.
        assert_eq!(
            split_by_size(&[3; 1000], 4),
            vec![0..250, 250..500, 500..750, 750..1000]
        );
    }
}
