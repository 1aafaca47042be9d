//! The player page (`/play/{video}`) and the small contract between it and whoever serves it
//! (a front-end: [`crate::frontend`] here, and SMART's own front-end, `smart-frontend`,
//! which reads the page and hls.js from this directory and follows this contract).
//!
//! ## What a server of the page provides, under one prefix (usually none)
//! | request | answer |
//! |---|---|
//! | `GET /play/{video}` | [`PAGE_HTML`] (`text/html`), the same bytes for every video |
//! | `GET /play/hls.min.js` | hls.js, from the npm package installed by `scripts/setup.sh` ([`asset`]) |
//! | `GET /watch/{video}.m3u8` | the HLS playlist (a redirect to the distributor is fine: the distributor sends CORS headers) |
//! | `GET /watch/{video}/where` | [`Where`] as JSON: `{"video","node","endpoint","events":[{"seq","at_ms","kind","text"}]}` |
//!
//! The page polls `where` every second: it shows `node` (the node serving the video, `null`
//! when none) and `endpoint` (its base URL), and prints each event whose `seq` is higher than
//! the last it printed. Event kinds the page colours: `placed`, `migrated`, `node_failed`,
//! `restarted`, `refused`; any other kind is printed as is. A server keeps the last few
//! events per video (the page only needs those since it was opened); `seq` grows by video.
//!
//! The page plays with hls.js where the browser has Media Source Extensions (every desktop
//! browser), else with the browser's own HLS (iOS Safari). Besides what it shows, it keeps
//! its state in `window.smartPlayer` (`currentTime`, `state`, `errors` of the `<video>`
//! element, `hlsErrors`, `fatal`, `segmentHost`: the host that served the last segment after
//! redirects, `node`, `events`), which is what the browser test reads.
//!
//! ## Layout
//! - [`PAGE_HTML`], [`ui_dir`], [`asset`]: the files.
//! - [`Where`], [`PlayerEvent`]: the JSON contract (defined once, in `smart_proto::player`,
//!   for both front-ends); [`Route`], [`route`]: its paths.

use std::path::PathBuf;

/// The page (`vod/ui/play.html`), compiled in.
pub const PAGE_HTML: &str = include_str!("../ui/play.html");

/// Environment variable naming another `ui` directory (with `node_modules` installed).
pub const UI_DIR_ENV: &str = "SMART_UI_DIR";

/// Where the page's npm dependencies are installed: `$SMART_UI_DIR`, else `vod/ui` of this
/// source tree.
pub fn ui_dir() -> PathBuf {
    std::env::var_os(UI_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/ui")))
}

/// A static file the page loads, by name (`hls.min.js`): `(content type, bytes)`, or None
/// when it is unknown or not installed.
pub fn asset(name: &str) -> Option<(&'static str, Vec<u8>)> {
    match name {
        "hls.min.js" => std::fs::read(ui_dir().join("node_modules/hls.js/dist/hls.min.js"))
            .ok()
            .map(|b| ("text/javascript", b)),
        _ => None,
    }
}

pub use smart_proto::player::{PlayerEvent, Where};

/// A request for the page or its contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/play/{video}`.
    Page(&'a str),
    /// `/play/{asset}`.
    Asset(&'a str),
    /// `/watch/{video}/where`.
    Where(&'a str),
}

/// Classifies a path (None: not the page's).
pub fn route(path: &str) -> Option<Route<'_>> {
    if let Some(rest) = path.strip_prefix("/play/") {
        return Some(match rest {
            "hls.min.js" => Route::Asset(rest),
            v if !v.is_empty() && !v.contains('/') => Route::Page(v),
            _ => return None,
        });
    }
    let v = path.strip_prefix("/watch/")?.strip_suffix("/where")?;
    (!v.is_empty() && !v.contains('/')).then_some(Route::Where(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/play/v1.ts"), Some(Route::Page("v1.ts")));
        assert_eq!(route("/play/hls.min.js"), Some(Route::Asset("hls.min.js")));
        assert_eq!(route("/watch/v1.ts/where"), Some(Route::Where("v1.ts")));
        for other in [
            "/play/",
            "/play/a/b",
            "/watch/v1.ts",
            "/watch//where",
            "/v1.ts",
        ] {
            assert_eq!(route(other), None, "{other}");
        }
    }

    #[test]
    fn page_uses_the_contract_paths() {
        for needle in [
            "hls.min.js",
            "/watch/",
            ".m3u8",
            "/where",
            "window.smartPlayer",
        ] {
            assert!(PAGE_HTML.contains(needle), "{needle}");
        }
        assert!(asset("../../etc/passwd").is_none());
    }

    #[test]
    fn where_json_shape() {
        let w = Where {
            video: "v1.ts".into(),
            node: Some("3".into()),
            endpoint: Some("http://127.0.0.1:9003/".into()),
            events: vec![PlayerEvent {
                seq: 1,
                at_ms: 5,
                kind: "migrated".into(),
                text: "moved".into(),
            }],
        };
        let j = serde_json::to_value(&w).unwrap();
        assert_eq!(j["events"][0]["kind"], "migrated");
        assert_eq!(serde_json::from_value::<Where>(j).unwrap(), w);
    }
}
