//! The dashboard (`/ui`): one page and its script, compiled in, and uPlot (the chart
//! library, from the npm package installed by `scripts/setup.sh`, embedded by `build.rs`).
//!
//! The page asks for an API token (kept in the browser's session storage, or given as
//! `/ui#token=...`), then reads `/v1/nodes`, `/v1/services` and `/v1/usage` every second and
//! follows `/v1/events` as a stream, so a member that dies turns dead on the page as soon as
//! this node's failure detector says so. Its state is also in `window.smartDashboard` (the
//! browser test reads it): `control`, `nodes` (`{node_id: {alive, dead_at_ms}}`),
//! `services`, `events`, `updated_at_ms`.
//!
//! ## Layout
//! - [`page`], [`asset`]: the handlers; `ui/dashboard.html`, `ui/dashboard.js`: the files.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("../../ui/dashboard.html");
const SCRIPT: &str = include_str!("../../ui/dashboard.js");
const UPLOT_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/uplot.js"));
const UPLOT_CSS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/uplot.css"));

fn with_type(body: impl IntoResponse, ctype: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /ui`.
pub async fn page() -> Response {
    with_type(PAGE, "text/html; charset=utf-8")
}

/// `GET /ui/{file}`: the script and uPlot.
pub async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "dashboard.js" => with_type(SCRIPT, "text/javascript; charset=utf-8"),
        "uplot.js" => with_type(UPLOT_JS, "text/javascript; charset=utf-8"),
        "uplot.css" => with_type(UPLOT_CSS, "text/css; charset=utf-8"),
        _ => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
