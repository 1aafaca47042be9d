//! HLS through the front-end: `GET /watch/{video}.m3u8` and
//! `GET /watch/{video}/seg/{n}.ts?s={session}`.
//!
//! The playlist is always served by the front-end (fetched from the distributor with the
//! session the front-end chose, `?s=`), never redirected: its segment URIs are relative
//! (`{video}/seg/{n}.ts?s=...`), so a player resolves them against the front-end's URL and
//! comes back here for every segment. Each segment request then reaches the distributor
//! the Control placed *now*:
//! - `hls = "relay"` (default): the front-end fetches the segment and streams it back,
//!   resuming by `Range` inside the segment when the distributor dies or hands off
//!   mid-segment ([`super::relay`]). A player never sees the node death: no failed request,
//!   no segment cut short, whatever its retry policy.
//! - `hls = "redirect"`: `302 Found` to the current distributor (from the placement cache;
//!   never to a node this node's membership believes dead). No segment byte passes through
//!   the front-end; a request that lands between a death and its detection (~0.5 s) meets a
//!   refused connection, and a segment being sent when the node dies is cut short: the
//!   player must retry it (hls.js does, and so did ffmpeg 5.1 in our trials).
//!
//! A session is one admitted client ([`super::sessions`]): a request whose session is
//! unknown is admitted first, and a refused admission is `503` with `Retry-After`, for
//! segments as for playlists.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use smart_proto::api::ApiError;
use tokio::time::Instant;

use super::relay::{self, Relay, RelayError, Resource};
use super::sessions::{Active, SessionError, SessionId};
use super::{Answer, Ctx, valid_video};
use smart_config::Delivery;

/// Largest playlist relayed (a 2 h video at 2 s segments is about 200 KB).
const MAX_PLAYLIST: usize = 16 << 20;
const CORS: (header::HeaderName, HeaderValue) = (
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    HeaderValue::from_static("*"),
);

fn status(code: StatusCode) -> HttpResponse {
    (code, [CORS]).into_response()
}

/// The value of `key` in a query string (`a=1&s=ab`), undecoded.
fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// A request of session `sid` on `video`: the session's `Active` mark, admitting it
/// first when the front-end does not know it.
async fn session(
    ctx: &Ctx,
    video: &str,
    sid: &SessionId,
    from: IpAddr,
) -> Result<Active, HttpResponse> {
    let refuse = |e: SessionError| match e {
        SessionError::OtherVideo => status(StatusCode::BAD_REQUEST),
        SessionError::Full => ctx.respond(Answer::Unavailable(e.to_string())),
    };
    match ctx.sessions.begin(sid, video) {
        Ok(Some(a)) => return Ok(a),
        Ok(None) => {}
        Err(e) => return Err(refuse(e)),
    }
    let p = match ctx.admit(video, from).await {
        Ok(p) => p,
        Err(answer) => return Err(ctx.respond(answer)),
    };
    match ctx.sessions.insert(sid, video, p.client) {
        Ok((a, extra)) => {
            if let Some((v, c)) = extra {
                ctx.release(&v, c);
            }
            Ok(a)
        }
        Err(e) => {
            ctx.release(video, p.client);
            Err(refuse(e))
        }
    }
}

/// The session id of a query (`s=`): `Err` when it is malformed.
fn session_param(query: Option<&str>) -> Result<Option<SessionId>, ()> {
    match query.and_then(|q| query_param(q, "s")) {
        None => Ok(None),
        Some(s) => SessionId::parse(s).map(Some).ok_or(()),
    }
}

fn relay_error(ctx: &Ctx, e: RelayError) -> HttpResponse {
    match e {
        RelayError::NotFound => status(StatusCode::NOT_FOUND),
        RelayError::Range { .. } => status(StatusCode::RANGE_NOT_SATISFIABLE),
        RelayError::Refused(s) => {
            status(StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY))
        }
        RelayError::Unavailable(why) => ctx.respond(Answer::Unavailable(why)),
    }
}

/// `GET /watch/{video}.m3u8[?s=ID]`.
pub(super) async fn playlist(
    ctx: Arc<Ctx>,
    video: &str,
    query: Option<&str>,
    from: IpAddr,
) -> HttpResponse {
    if !valid_video(video) {
        return status(StatusCode::NOT_FOUND);
    }
    let sid = match session_param(query) {
        Ok(s) => s.unwrap_or_else(SessionId::random),
        Err(()) => return status(StatusCode::BAD_REQUEST),
    };
    let active = match session(&ctx, video, &sid, from).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let res = Resource {
        video: video.to_string(),
        path: format!("{video}.m3u8?s={}", sid.as_str()),
    };
    let cfg = ctx.relay_cfg();
    let deadline = Instant::now() + cfg.resume_deadline;
    // A playlist is small: read it whole, and start again elsewhere if that fails.
    let body = loop {
        let up = match relay::open(&ctx.placements, &res, 0, &cfg, deadline, &ctx.counters).await {
            Ok(up) => up,
            Err(e) => return relay_error(&ctx, e),
        };
        match up.into_body(MAX_PLAYLIST, Duration::from_secs(10)).await {
            Ok(b) => break b,
            Err(_) if Instant::now() < deadline => continue,
            Err(e) => return ctx.respond(Answer::Unavailable(e.to_string())),
        }
    };
    drop(active);
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.apple.mpegurl"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(CORS.0, CORS.1);
    if let Ok(v) = HeaderValue::from_str(sid.as_str()) {
        h.insert("x-session", v);
    }
    r
}

/// The segment number of `{n}.ts`.
fn segment_number(file: &str) -> Option<u64> {
    let digits = file.strip_suffix(".ts")?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `GET /watch/{video}/seg/{n}.ts?s=ID`.
pub(super) async fn segment(
    ctx: Arc<Ctx>,
    video: &str,
    file: &str,
    query: Option<&str>,
    from: IpAddr,
) -> HttpResponse {
    if !valid_video(video) {
        return status(StatusCode::NOT_FOUND);
    }
    let Some(n) = segment_number(file) else {
        return status(StatusCode::BAD_REQUEST);
    };
    // Segment URIs come from our playlists and always carry the session.
    let Ok(Some(sid)) = session_param(query) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let active = match session(&ctx, video, &sid, from).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let path = format!("{video}/seg/{n}.ts?s={}", sid.as_str());
    let cfg = ctx.relay_cfg();
    let deadline = Instant::now() + cfg.resume_deadline;
    if ctx.cfg.frontend.hls == Delivery::Redirect {
        return loop {
            match ctx.placements.current(video, None).await {
                Ok(p) => {
                    let to = p
                        .endpoint
                        .parse::<Uri>()
                        .ok()
                        .and_then(|b| relay::join(&b, &path));
                    break match to.and_then(|u| HeaderValue::from_str(&u.to_string()).ok()) {
                        Some(loc) => {
                            (StatusCode::FOUND, [(header::LOCATION, loc), CORS]).into_response()
                        }
                        None => status(StatusCode::BAD_GATEWAY),
                    };
                }
                Err(ApiError::NotFound { .. }) => break status(StatusCode::NOT_FOUND),
                Err(e) if Instant::now() >= deadline => {
                    break ctx.respond(Answer::Unavailable(e.to_string()));
                }
                Err(_) => tokio::time::sleep(relay_retry()).await,
            }
        };
    }
    let res = Resource {
        video: video.to_string(),
        path,
    };
    let up = match relay::open(&ctx.placements, &res, 0, &cfg, deadline, &ctx.counters).await {
        Ok(up) => up,
        Err(e) => return relay_error(&ctx, e),
    };
    let total = up.total;
    let offset = up
        .header("x-segment-offset")
        .and_then(|v| HeaderValue::from_str(v).ok());
    let body = relay::body(Relay {
        placements: ctx.placements.clone(),
        res,
        pos: 0,
        end: total,
        total,
        up: Some(up),
        cfg,
        counters: ctx.counters.clone(),
        _guards: vec![Box::new(active)],
        broke_at: None,
    });
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp2t"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(CORS.0, CORS.1);
    if let Some(o) = offset {
        h.insert("x-segment-offset", o);
    }
    r
}

fn relay_retry() -> Duration {
    super::placements::RELOCATE_EVERY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_numbers_and_session_ids() {
        assert_eq!(segment_number("0.ts"), Some(0));
        assert_eq!(segment_number("17.ts"), Some(17));
        for bad in [
            "",
            ".ts",
            "x.ts",
            "1",
            "-1.ts",
            "1.ts.ts",
            "99999999999999999999999.ts",
        ] {
            assert_eq!(segment_number(bad), None, "{bad}");
        }
        assert!(session_param(Some("s=ab_12-Z")).unwrap().is_some());
        assert!(session_param(Some("x=1")).unwrap().is_none());
        assert!(session_param(None).unwrap().is_none());
        for bad in [
            "s=",
            "s=a%2fb",
            "s=<script>",
            &format!("s={}", "a".repeat(33)),
        ] {
            assert!(session_param(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(query_param("a=1&s=x", "s"), Some("x"));
        assert_eq!(query_param("as=1", "s"), None);
    }
}
