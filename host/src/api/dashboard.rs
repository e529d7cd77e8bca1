//! The live dashboard at `GET /`: a page of plain HTML, CSS and JavaScript
//! (with uPlot, vendored under its MIT licence, for the time series), every
//! file embedded in the binary, so it works offline and never fetches
//! anything from elsewhere. It reads only the query API and `/v1/stream`.
//! Also served from here: the browser tracker at `GET /tracker.js`.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The page's files: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../dashboard/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../dashboard/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../dashboard/app.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../dashboard/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../dashboard/vendor/uPlot.min.css"),
    ),
    // The bundled alerter's rules when it runs without a config.
    (
        "alerts-default.json",
        "application/json",
        include_bytes!("../../../plugins/alerts/default-config.json"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../../dashboard/vendor/uPlot.LICENSE"),
    ),
];

fn asset(name: &str) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, ty, body)) => (
            [
                (header::CONTENT_TYPE, *ty),
                // The page changes with the binary: always revalidate.
                (header::CACHE_CONTROL, "no-cache"),
                // Nothing but this origin: no CDN, no inline script.
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:",
                ),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such dashboard file\n").into_response(),
    }
}

pub(super) async fn index() -> Response {
    asset("index.html")
}

pub(super) async fn file(Path(name): Path<String>) -> Response {
    asset(&name)
}

/// The browser tracker (host/tracker), built by its build.sh; sites load it
/// from other origins, so it is cached for an hour rather than revalidated.
pub(super) async fn tracker() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_bytes!("../../tracker/tracker.min.js").as_slice(),
    )
        .into_response()
}
