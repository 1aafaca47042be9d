//! # smart-frontend
//!
//! The front-end (GloVE's Supervisor, thesis §5.2): viewers' one address.
//!
//! | request | answer |
//! |---|---|
//! | `GET /watch/{video}` | progressive: `302` to the distributor the Control placed (`[frontend] progressive = "redirect"`, the thesis), or the video relayed from it (`"relay"`) |
//! | `GET /watch/{video}.m3u8` | the HLS playlist, served here with a session id chosen here (`hls`) |
//! | `GET /watch/{video}/seg/{n}.ts?s=ID` | the segment, relayed from the current distributor (`hls = "relay"`) or `302` to it (`"redirect"`) |
//! | `GET /watch/{video}/where` | the player page's JSON: node, endpoint and events of the video (`page`) |
//! | `GET /play/{video}`, `GET /play/hls.min.js` | the player page and hls.js (files in `[frontend] player_dir`; contract in `smart_vod::player`) |
//! | `GET /healthz` | `200` while it serves and knows a Control, else `503` (for a failover daemon's check) |
//!
//! When admission says no: `503 Service Unavailable` with `Retry-After` and the reason (body
//! and `X-Reason`). Bad names, session ids and segment numbers get `4xx`.
//!
//! Before the Control is asked (`gate`): an admission that may start a service (no
//! placement of the video is known here) takes a token of its client address's bucket
//! (none left: `429 Too Many Requests` with `Retry-After`, counted in `frontend_429`); then
//! the origin is asked `HEAD /{video}` (cached per video): a video it does not have is `404`
//! and starts nothing (`frontend_unknown_video`), an origin that does not answer is `502`
//! with the cause (`frontend_origin_unreachable`), and the distributor's spec carries the
//! video's `X-Bitrate` as `per_client_bps` and its `X-Duration-Ms` as `duration_ms`, which
//! the Control scales the class profile by. Every viewer admission then takes a token of
//! its client address's bucket and of the video's (`429` when either is empty:
//! `frontend_429_address`, `frontend_429_video`), so a stranger's `/watch` flood holds few
//! reservations (the Control releases a client its distributor does not count after the
//! arrival window). The client address is the connection's, or the one a trusted proxy
//! forwards for.
//!
//! Admission per viewer:
//! - progressive, redirect: a viewer resuming (a `Range` starting past byte 0: its
//!   distributor moved or died) is only *located* (it was admitted already); otherwise a
//!   client is admitted (Smart-GloVE rule: it joins the video's distributor), in one request
//!   to the Control that also carries the distributor's spec (from the `[frontend]` command
//!   template), so the first viewer of a video costs one round trip. A redirect ends the
//!   viewer's connection to us, so releases come from the distributor's client count (the
//!   Control's own rule) or the message API (`ReleaseClient`);
//! - progressive, relay: each relayed connection is one admitted client, released when the
//!   connection ends (the front-end sees it);
//! - HLS: each session is one admitted client, released when it has made no request for
//!   `hls_session_timeout` (`sessions`).
//!
//! Relaying (progressive or HLS): when the distributor's connection breaks (kill -9 of its
//! node, a handoff), the front-end locates the service again and resumes by `Range` at the
//! exact byte (`relay`); the viewer sees one unbroken response. Placements are cached per
//! video and kept current by the Control's events (`placements`).
//!
//! Every Control call goes through [`Forwarder::forward`], which retries across a Control
//! failover within its deadline; a viewer therefore sees a slower answer, not an error.
//!
//! ## Layout
//! - [`HttpFrontEnd`]: the actor owning the listener (restarted by the node's supervisor),
//!   the event follower and the session sweeper.
//! - [`service_of`], [`spec_for`]: video name to service name and spec.
//! - `placements`, `relay`, `sessions`, `hls`, `page`: the parts above.

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

mod gate;
mod hls;
mod page;
mod placements;
mod relay;
pub use relay::{RESUME_BUCKETS, resume_quantile};
mod sessions;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::get;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use smart_proto::api::{Placement, Request, Response, ServiceSpec};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span};

use self::gate::{Catalogue, CatalogueError, RateLimiter};
use self::page::{EventLog, Where};
use self::placements::Placements;
use self::relay::{Relay, RelayCfg, RelayError, Resource};
use self::sessions::Sessions;
use smart_config::{Delivery, NodeConfig};
use smart_control::forward::Forwarder;
use smart_node::counters::Counters;
use smart_node::events::Subscribers;
use smart_node::http::{self, AddressKey, HttpLimits};

/// The service name of a video's distributor.
pub fn service_of(video: &str) -> String {
    format!("video-{video}")
}

/// The environment variable that names a distributor's one video.
pub const VIDEO_ENV: &str = "SMART_VIDEO";

/// The distributor spec of `video` from the node's `[frontend]` template, for a video of
/// `bitrate_bps` and `duration_ms` (the origin's `X-Bitrate` and `X-Duration-Ms`).
pub fn spec_for(
    cfg: &smart_config::FrontendConfig,
    video: &str,
    bitrate_bps: u64,
    duration_ms: Option<u64>,
) -> ServiceSpec {
    ServiceSpec {
        name: service_of(video),
        class: "distributor".into(),
        command: cfg
            .distributor_command
            .iter()
            .map(|a| a.replace("{origin}", &cfg.origin).replace("{video}", video))
            .collect(),
        // The distributor serves this video only (`smart distributor` reads it).
        env: vec![(VIDEO_ENV.to_string(), video.to_string())],
        per_client_bps: Some(bitrate_bps),
        duration_ms,
    }
}

/// A valid video name: what the origin can serve as one path segment.
fn valid_video(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 200
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && v != "."
        && v != ".."
}

/// First byte of a `Range: bytes=N-` header.
fn range_start(r: Option<&str>) -> u64 {
    r.and_then(|r| r.trim().strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// A viewer's `Range` for a relayed video: `Ok(None)` for the whole video (no header, or a
/// suffix range, which a server may ignore), `Ok(Some((first, Some(last + 1))))`, or `Err`
/// for a malformed header (answered `416`). One range only, as players send.
fn relay_range(r: Option<&str>) -> Result<Option<(u64, Option<u64>)>, ()> {
    let Some(r) = r else { return Ok(None) };
    let spec = r.trim().strip_prefix("bytes=").ok_or(())?;
    let (a, b) = spec.split_once('-').ok_or(())?;
    let num = |s: &str| -> Result<u64, ()> {
        let s = s.trim();
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(());
        }
        s.parse().map_err(|_| ())
    };
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => Err(()),
        (true, false) => num(b).map(|_| None),
        (false, true) => Ok(Some((num(a)?, None))),
        (false, false) => {
            let (a, b) = (num(a)?, num(b)?);
            if b < a {
                return Err(());
            }
            Ok(Some((a, Some(b + 1))))
        }
    }
}

/// What to answer a viewer.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Redirect(String),
    Unavailable(String),
    NotFound,
    /// Over a rate (which one, in words): retry after this long.
    TooMany(&'static str, Duration),
    /// The origin could not say whether the video exists.
    BadGateway(String),
}

/// The front-end HTTP actor.
pub struct HttpFrontEnd {
    /// The node's configuration (`frontend_http`, `[frontend]`).
    pub cfg: Arc<NodeConfig>,
    /// Node counters.
    pub counters: Arc<Counters>,
    /// Forwarding to the Control with retries.
    pub forwarder: Forwarder,
    /// This node's event subscribers (the Control's events, for the page and the cache).
    pub subscribers: Arc<Subscribers>,
    /// Rate-limited WARN lines for refused viewers.
    pub warnings: Arc<smart_transport::ratelog::WarnLimiter>,
}

/// What the routes share.
struct Ctx {
    cfg: Arc<NodeConfig>,
    counters: Arc<Counters>,
    forwarder: Forwarder,
    placements: Arc<Placements>,
    sessions: Arc<Sessions>,
    log: Arc<EventLog>,
    /// The player page's files.
    player_dir: std::path::PathBuf,
    /// The origin's videos.
    catalogue: Catalogue,
    /// New services per client address.
    limiter: RateLimiter<AddressKey>,
    /// Viewer admissions per client address.
    viewers: RateLimiter<AddressKey>,
    /// Viewer admissions per video.
    videos: RateLimiter<String>,
    /// Rate-limited WARN lines.
    warnings: Arc<smart_transport::ratelog::WarnLimiter>,
}

/// Releases an admitted client when dropped (a relayed connection ended).
struct Release {
    forwarder: Forwarder,
    service: String,
    client: Option<u64>,
}

impl Drop for Release {
    fn drop(&mut self) {
        release(&self.forwarder, self.service.clone(), self.client);
    }
}

/// Sends `ReleaseClient` without waiting for the answer.
fn release(forwarder: &Forwarder, service: String, client: Option<u64>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let f = forwarder.clone();
    rt.spawn(async move {
        let r = f
            .forward(Request::ReleaseClient {
                service: service.clone(),
                client,
            })
            .await;
        debug!(%service, ?client, answer = ?r, "client released");
    });
}

impl Ctx {
    /// The viewer's address (see [`gate::client_address`]).
    fn client_of(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        gate::client_address(
            peer.ip(),
            headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok()),
            &self.cfg.frontend.trusted_proxies,
        )
    }

    fn relay_cfg(&self) -> RelayCfg {
        RelayCfg {
            // An HLS segment may wait for its session's allowance (at most a few seconds).
            head_timeout: Duration::from_secs(15),
            // The distributor writes a paced viewer every 200 ms, a segment at link speed.
            idle_timeout: Duration::from_secs(3),
            resume_deadline: self.cfg.frontend.relay_resume_deadline,
        }
    }

    /// Admits one client of `video` for a viewer at `from`; what to answer when refused.
    async fn admit(&self, video: &str, from: IpAddr) -> Result<Placement, Answer> {
        let key = AddressKey::of(from);
        if !self.placements.has(video)
            && let Err(wait) = self.limiter.take(&key, tokio::time::Instant::now())
        {
            return Err(self.too_many(
                "frontend_429",
                "too many new videos from this address",
                wait,
                format_args!("{from} is over its rate of new videos (asked for {video:?})"),
            ));
        }
        let info = match self.catalogue.lookup(video).await {
            Ok(info) => info,
            Err(CatalogueError::NotFound) => {
                self.counters.incr("frontend_unknown_video");
                self.warnings.warn(
                    "frontend_unknown_video",
                    format_args!("{from} asked for {video:?}, which the origin does not have"),
                );
                return Err(Answer::NotFound);
            }
            Err(e) => {
                self.counters.incr("frontend_origin_unreachable");
                self.warnings.warn(
                    "frontend_origin_unreachable",
                    format_args!("cannot ask the origin about {video:?}: {e}"),
                );
                return Err(Answer::BadGateway(e.to_string()));
            }
        };
        // Every admission costs a reservation until its viewer is counted or its arrival
        // window passes: one address, and all addresses for one video, get so many.
        let now = tokio::time::Instant::now();
        if let Err(wait) = self.viewers.take(&key, now) {
            return Err(self.too_many(
                "frontend_429_address",
                "too many viewers from this address",
                wait,
                format_args!("{from} is over its rate of viewer admissions ({video:?})"),
            ));
        }
        if let Err(wait) = self.videos.take(&video.to_string(), now) {
            return Err(self.too_many(
                "frontend_429_video",
                "too many new viewers of this video",
                wait,
                format_args!("{video:?} is over its rate of viewer admissions"),
            ));
        }
        let spec = spec_for(
            &self.cfg.frontend,
            video,
            info.bitrate_bps,
            info.duration_ms,
        );
        // One key for this viewer's request, and one deadline: every retry on the way to
        // the Control (across a failover, after a timeout) admits this viewer once, and
        // none outlives the request.
        let deadline = tokio::time::Instant::now() + self.forwarder.budget;
        let r = self
            .forwarder
            .forward_by(
                Request::AdmitClient {
                    service: service_of(video),
                    spec: Some(spec),
                    key: Some(rand::random()),
                },
                deadline,
            )
            .await;
        match r {
            Response::Placed(p) => {
                self.placements.set(video, &p);
                Ok(p)
            }
            Response::Error(e) => {
                if matches!(e, smart_proto::api::ApiError::Rejected { .. }) {
                    self.log.push(video, "refused", e.to_string());
                }
                Err(Answer::Unavailable(e.to_string()))
            }
            other => Err(Answer::Unavailable(format!("unexpected {other:?}"))),
        }
    }

    /// A `429` for being over a rate: counted under `counter` (and `frontend_429`), one
    /// rate-limited WARN line, and `what` for the viewer.
    fn too_many(
        &self,
        counter: &'static str,
        what: &'static str,
        wait: Duration,
        warn: std::fmt::Arguments<'_>,
    ) -> Answer {
        if counter != "frontend_429" {
            self.counters.incr("frontend_429");
        }
        self.counters.incr(counter);
        self.warnings.warn(counter, warn);
        Answer::TooMany(what, wait)
    }

    fn release(&self, video: &str, client: Option<u64>) {
        release(&self.forwarder, service_of(video), client);
    }

    async fn decide(&self, video: &str, resume_at: u64, from: IpAddr) -> Answer {
        if resume_at > 0
            && let Response::Placed(p) = self
                .forwarder
                .forward(Request::Locate {
                    service: service_of(video),
                })
                .await
        {
            return Answer::Redirect(format!("{}{video}", p.endpoint));
        }
        match self.admit(video, from).await {
            Ok(p) => Answer::Redirect(format!("{}{video}", p.endpoint)),
            Err(answer) => answer,
        }
    }

    fn respond(&self, answer: Answer) -> HttpResponse {
        match answer {
            Answer::Redirect(to) => match HeaderValue::from_str(&to) {
                Ok(loc) => (StatusCode::FOUND, [(header::LOCATION, loc)]).into_response(),
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            },
            Answer::Unavailable(reason) => {
                self.counters.incr("frontend_503");
                debug!(%reason, "answering 503");
                // Viewers are told why in words, never where: the cluster's addresses stay
                // inside.
                let reason = viewer_reason(&reason.replace(['\r', '\n'], " "));
                let mut r = (StatusCode::SERVICE_UNAVAILABLE, reason.clone()).into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
                r.headers_mut().insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
                if let Ok(v) = HeaderValue::from_str(&reason) {
                    r.headers_mut().insert("x-reason", v);
                }
                r
            }
            Answer::NotFound => (StatusCode::NOT_FOUND, "no such video\n").into_response(),
            Answer::TooMany(what, wait) => {
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                let mut r = (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("{what}; retry in {secs} s\n"),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                r
            }
            Answer::BadGateway(reason) => {
                let reason = reason.replace(['\r', '\n'], " ");
                let mut r =
                    (StatusCode::BAD_GATEWAY, format!("origin: {reason}\n")).into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
                r
            }
        }
    }

    /// Progressive, relayed: one admitted client for the connection's life.
    async fn relay_progressive(
        self: Arc<Self>,
        video: &str,
        range: Option<&str>,
        from_ip: IpAddr,
    ) -> HttpResponse {
        let Ok(range) = relay_range(range) else {
            return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
        };
        let (from, to) = range.unwrap_or((0, None));
        let p = match self.admit(video, from_ip).await {
            Ok(p) => p,
            Err(answer) => return self.respond(answer),
        };
        let guard = Release {
            forwarder: self.forwarder.clone(),
            service: service_of(video),
            client: p.client,
        };
        let res = Resource {
            video: video.to_string(),
            path: video.to_string(),
        };
        let cfg = self.relay_cfg();
        let deadline = tokio::time::Instant::now() + cfg.resume_deadline;
        let up =
            match relay::open(&self.placements, &res, from, &cfg, deadline, &self.counters).await {
                Ok(up) => up,
                Err(RelayError::NotFound) => return StatusCode::NOT_FOUND.into_response(),
                Err(RelayError::Range { total }) => return unsatisfiable(total),
                Err(RelayError::Refused(s)) => {
                    return StatusCode::from_u16(s)
                        .unwrap_or(StatusCode::BAD_GATEWAY)
                        .into_response();
                }
                Err(e @ RelayError::Unavailable(_)) => {
                    return self.respond(Answer::Unavailable(e.to_string()));
                }
            };
        let total = up.total;
        let end = to.unwrap_or(total).min(total);
        if from >= end {
            return unsatisfiable(total);
        }
        let pass: Vec<(&'static str, HeaderValue)> =
            ["x-bitrate", "x-duration-ms", "x-prefetch-bytes"]
                .into_iter()
                .filter_map(|k| Some((k, HeaderValue::from_str(up.header(k)?).ok()?)))
                .collect();
        let body = relay::body(Relay {
            placements: self.placements.clone(),
            res,
            pos: from,
            end,
            total,
            up: Some(up),
            cfg,
            counters: self.counters.clone(),
            _guards: vec![Box::new(guard)],
            broke_at: None,
        });
        self.counters.incr("frontend_relayed");
        let code = if range.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        let mut r = (code, body).into_response();
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp2t"));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - from));
        if range.is_some()
            && let Ok(v) = HeaderValue::from_str(&format!("bytes {from}-{}/{total}", end - 1))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
        for (k, v) in pass {
            h.insert(k, v);
        }
        r
    }
}

fn unsatisfiable(total: u64) -> HttpResponse {
    let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
        r.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    r
}

/// `GET /watch/{video}` (progressive) and `GET /watch/{video}.m3u8` (HLS playlist).
async fn watch(
    State(ctx): State<Arc<Ctx>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(video): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> HttpResponse {
    let from = ctx.client_of(peer, &headers);
    if let Some(v) = video.strip_suffix(".m3u8") {
        return hls::playlist(ctx, v, query.as_deref(), from).await;
    }
    if !valid_video(&video) {
        return ctx.respond(Answer::NotFound);
    }
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    if ctx.cfg.frontend.progressive == Delivery::Relay {
        return ctx.clone().relay_progressive(&video, range, from).await;
    }
    let answer = ctx.decide(&video, range_start(range), from).await;
    debug!(%video, ?answer, "front-end answer");
    ctx.respond(answer)
}

/// `GET /watch/{video}/seg/{n}.ts?s=ID`.
async fn segment(
    State(ctx): State<Arc<Ctx>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((video, file)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> HttpResponse {
    let from = ctx.client_of(peer, &headers);
    hls::segment(ctx, &video, &file, query.as_deref(), from).await
}

/// `GET /watch/{video}/where`.
async fn where_is(State(ctx): State<Arc<Ctx>>, Path(video): Path<String>) -> HttpResponse {
    if !valid_video(&video) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let p = ctx.placements.fresh(&video).await;
    let w = Where {
        events: ctx.log.of(&video),
        node: p.as_ref().map(|p| p.node.to_string()),
        endpoint: p.map(|p| p.endpoint),
        video,
    };
    let mut r = Json(w).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /play/{video}` and `GET /play/hls.min.js`.
async fn play(State(ctx): State<Arc<Ctx>>, Path(name): Path<String>) -> HttpResponse {
    let which = if name == "hls.min.js" {
        "hls.min.js"
    } else {
        ""
    };
    if which.is_empty() && !valid_video(&name) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Some((ctype, path)) = page::file(&ctx.player_dir, which) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, ctype),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => {
            debug!(path = %path.display(), cause = %e, "player file missing");
            // hls.js is installed by `scripts/setup.sh` (`npm ci` in vod/ui).
            (
                StatusCode::NOT_FOUND,
                format!(
                    "{} is missing (run scripts/setup.sh, or set [frontend] player_dir)",
                    path.display()
                ),
            )
                .into_response()
        }
    }
}

/// `GET /healthz`: `200` while this front-end serves and knows a Control (it can admit
/// viewers), `503` when it knows none. What a failover daemon beside it checks (see
/// docs/operations.md, "Two front-ends, one address"): a front-end cut off from the
/// cluster should hand the shared address to one that is not.
async fn healthz(State(ctx): State<Arc<Ctx>>) -> HttpResponse {
    let control = ctx.forwarder.view.borrow().control.as_ref().map(|c| c.node);
    let mut r = match control {
        Some(node) => (StatusCode::OK, format!("ok: control {node}\n")).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no control known\n").into_response(),
    };
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The front-end's routes.
fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/watch/{video}", get(watch))
        .route("/watch/{video}/where", get(where_is))
        .route("/watch/{video}/seg/{file}", get(segment))
        .route("/play/{name}", get(play))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(ctx)
}

/// Releases the HLS sessions that stopped fetching, every second.
async fn sweep_sessions(sessions: Arc<Sessions>, forwarder: Forwarder, counters: Arc<Counters>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for (video, client) in sessions.sweep(tokio::time::Instant::now()) {
            counters.incr("frontend_hls_sessions_expired");
            release(&forwarder, service_of(&video), client);
        }
    }
}

/// The running front-end: its tasks and sessions.
pub struct FrontEndState {
    tasks: Vec<JoinHandle<()>>,
    sessions: Arc<Sessions>,
    forwarder: Forwarder,
}

impl Actor for HttpFrontEnd {
    type Msg = ();
    type State = FrontEndState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let addr = self
            .cfg
            .frontend_http
            .ok_or("front-end role without frontend_http")?;
        let l = http::listen(addr)
            .map_err(|e| format!("cannot listen on {addr} (frontend_http): {e}"))?;
        let node = self.cfg.id();
        let fc = &self.cfg.frontend;
        info!(%node, %addr, progressive = ?fc.progressive, hls = ?fc.hls, "front-end HTTP listening");
        let placements = Arc::new(Placements::new(self.forwarder.clone()));
        let sessions = Sessions::new(fc.hls_session_timeout, fc.max_hls_sessions);
        let log = Arc::new(EventLog::default());
        let ctx = Arc::new(Ctx {
            cfg: self.cfg.clone(),
            counters: self.counters.clone(),
            forwarder: self.forwarder.clone(),
            placements: placements.clone(),
            sessions: sessions.clone(),
            log: log.clone(),
            player_dir: page::player_dir(fc.player_dir.as_deref()),
            catalogue: Catalogue::new(
                &fc.origin,
                fc.bitrate_bps,
                fc.catalogue_ttl,
                fc.origin_timeout,
            ),
            limiter: RateLimiter::new(fc.new_services_per_sec, fc.new_services_burst),
            viewers: RateLimiter::new(fc.viewer_admissions_per_sec, fc.viewer_admissions_burst),
            videos: RateLimiter::new(fc.video_admissions_per_sec, fc.video_admissions_burst),
            warnings: self.warnings.clone(),
        });
        let span = info_span!("frontend", %node);
        let tasks = vec![
            tokio::spawn(
                http::serve(
                    l,
                    router(ctx),
                    HttpLimits {
                        uncapped: fc.trusted_proxies.clone().into(),
                        ..HttpLimits::default()
                    },
                    // Viewers' players speak plain HTTP to the front-end (a TLS front
                    // belongs to the operator's proxy, see `trusted_proxies`).
                    None,
                    self.counters.clone(),
                    "frontend",
                )
                .instrument(span.clone()),
            ),
            tokio::spawn(
                page::follow(self.subscribers.local(), log, placements).instrument(span.clone()),
            ),
            tokio::spawn(
                sweep_sessions(
                    sessions.clone(),
                    self.forwarder.clone(),
                    self.counters.clone(),
                )
                .instrument(span),
            ),
        ];
        Ok(FrontEndState {
            tasks,
            sessions,
            forwarder: self.forwarder.clone(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<()>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for t in &st.tasks {
            t.abort();
        }
        // A restarted front-end starts with no sessions: release this one's admissions
        // (players that come back are admitted again under their session id).
        for (video, client) in st.sessions.drain() {
            release(&st.forwarder, service_of(&video), client);
        }
        Ok(())
    }
}

/// `reason` with every network address in it (`10.0.0.3:7101`, `[::1]:80`, a URL's host)
/// replaced by "a node": what a viewer may read of why it was refused.
fn viewer_reason(reason: &str) -> String {
    let is_address = |word: &str| {
        let core = word.trim_matches(|c: char| matches!(c, ',' | ';' | '(' | ')' | '\'' | '"'));
        let core = core.strip_suffix(['.', ':']).unwrap_or(core);
        let host = core
            .split_once("://")
            .map_or(core, |(_, rest)| rest.split('/').next().unwrap_or(rest));
        host.parse::<std::net::SocketAddr>().is_ok()
            || host.parse::<std::net::IpAddr>().is_ok()
            || host.rsplit_once(':').is_some_and(|(h, p)| {
                p.parse::<u16>().is_ok() && h.parse::<std::net::IpAddr>().is_ok()
            })
    };
    reason
        .split(' ')
        .map(|w| if is_address(w) { "a node" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_names_and_specs() {
        assert_eq!(range_start(Some("bytes=1234-")), 1234);
        assert_eq!(range_start(Some("bytes=0-")), 0);
        assert_eq!(range_start(Some("junk")), 0);
        assert_eq!(range_start(None), 0);
        assert_eq!(relay_range(None), Ok(None));
        assert_eq!(relay_range(Some("bytes=10-")), Ok(Some((10, None))));
        assert_eq!(relay_range(Some("bytes=10-19")), Ok(Some((10, Some(20)))));
        assert_eq!(relay_range(Some("bytes=-500")), Ok(None));
        for bad in [
            "bytes=",
            "bytes=-",
            "bytes=9-5",
            "bytes=a-",
            "items=1-",
            "bytes=1-2,4-5",
            "bytes=99999999999999999999999-",
            "bytes=18446744073709551615-",
        ] {
            assert_eq!(relay_range(Some(bad)), Err(()), "{bad}");
        }
        assert!(valid_video("v1.ts"));
        for bad in ["", "..", "a/b", "a b", "x%2f"] {
            assert!(!valid_video(bad), "{bad}");
        }
        let cfg = smart_config::FrontendConfig {
            distributor_command: vec![
                "d".into(),
                "--origin".into(),
                "{origin}".into(),
                "{listen}".into(),
            ],
            origin: "http://o:1".into(),
            bitrate_bps: 500_000,
            ..Default::default()
        };
        let s = spec_for(&cfg, "v1", 4_000_000, Some(7_200_000));
        assert_eq!(s.name, "video-v1");
        assert_eq!(s.command, vec!["d", "--origin", "http://o:1", "{listen}"]);
        assert_eq!(s.env, vec![(VIDEO_ENV.to_string(), "v1".to_string())]);
        assert_eq!(s.per_client_bps, Some(4_000_000));
        assert_eq!(s.duration_ms, Some(7_200_000));
    }

    /// A viewer's 503 names no internal address, and keeps the words that say why.
    #[test]
    fn viewer_reasons_name_no_address() {
        assert_eq!(
            viewer_reason("cannot reach 10.0.0.3:7101: connection refused"),
            "cannot reach a node connection refused"
        );
        assert_eq!(
            viewer_reason(
                "redirect 302 to another server (http://127.0.0.1:7100/metrics) not followed"
            ),
            "redirect 302 to another server a node not followed"
        );
        assert_eq!(
            viewer_reason("upstream [::1]:9001 gone"),
            "upstream a node gone"
        );
        assert_eq!(
            viewer_reason("admission refused: no room (0.8 of 1.0 cores)"),
            "admission refused: no room (0.8 of 1.0 cores)"
        );
    }
}
