//! The front-end's HTTP side (GloVE's Supervisor, thesis §5.2): `GET /watch/{video}` asks the
//! Control for a place and answers `302 Found` to the distributor it picked, so that any HTTP
//! player works; when admission says no, `503 Service Unavailable` with `Retry-After` and the
//! reason in the body.
//!
//! Per request:
//! - a viewer resuming (a `Range` starting past byte 0: its distributor moved or died) is
//!   only *located* (no new admission: it was admitted already);
//! - otherwise a client is admitted (Smart-GloVE rule: it joins the video's distributor),
//!   in one request to the Control that also carries the distributor's spec (from the
//!   `[frontend]` command template), so the first viewer of a video costs one round trip:
//!   the Control admits the video's distributor first, then the client.
//!
//! Every Control call goes through [`Forwarder::forward`], which retries across a Control
//! failover within its deadline; a viewer therefore sees a slower answer, not an error.
//! A redirect ends the viewer's connection to us, so the front-end cannot see the viewer
//! leave: releases come through the message API (`ReleaseClient`), e.g. from a player's
//! session end.
//!
//! ## Layout
//! - [`HttpFrontEnd`]: the actor owning the listener (restarted by the node's supervisor).
//! - [`service_of`], [`spec_for`]: video name to service name and spec.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::get;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use smart_api::{Request, Response, ServiceSpec};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span};

use super::counters::Counters;
use super::forward::Forwarder;
use super::http::{self, HttpLimits};
use crate::config::NodeConfig;

/// The service name of a video's distributor.
pub fn service_of(video: &str) -> String {
    format!("video-{video}")
}

/// The distributor spec of `video` from the node's `[frontend]` template.
pub fn spec_for(cfg: &crate::config::FrontendConfig, video: &str) -> ServiceSpec {
    ServiceSpec {
        name: service_of(video),
        class: "distributor".into(),
        command: cfg
            .distributor_command
            .iter()
            .map(|a| a.replace("{origin}", &cfg.origin).replace("{video}", video))
            .collect(),
        env: Vec::new(),
        per_client_bps: Some(cfg.bitrate_bps),
        duration_ms: None,
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

/// What to answer a viewer.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Redirect(String),
    Unavailable(String),
    NotFound,
}

/// The front-end HTTP actor.
pub struct HttpFrontEnd {
    /// The node's configuration (`frontend_http`, `[frontend]`).
    pub cfg: Arc<NodeConfig>,
    /// Node counters.
    pub counters: Arc<Counters>,
    /// Forwarding to the Control with retries.
    pub forwarder: Forwarder,
}

struct Ctx {
    cfg: Arc<NodeConfig>,
    counters: Arc<Counters>,
    forwarder: Forwarder,
}

impl Ctx {
    async fn decide(&self, video: &str, resume_at: u64) -> Answer {
        let service = service_of(video);
        if resume_at > 0
            && let Response::Placed(p) = self
                .forwarder
                .forward(Request::Locate {
                    service: service.clone(),
                })
                .await
        {
            return Answer::Redirect(format!("{}{video}", p.endpoint));
        }
        let r = self
            .forwarder
            .forward(Request::AdmitClient {
                service,
                spec: Some(spec_for(&self.cfg.frontend, video)),
            })
            .await;
        match r {
            Response::Placed(p) => Answer::Redirect(format!("{}{video}", p.endpoint)),
            Response::Error(e) => Answer::Unavailable(e.to_string()),
            other => Answer::Unavailable(format!("unexpected {other:?}")),
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
                let reason = reason.replace(['\r', '\n'], " ");
                let mut r = (StatusCode::SERVICE_UNAVAILABLE, reason.clone()).into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
                if let Ok(v) = HeaderValue::from_str(&reason) {
                    r.headers_mut().insert("x-reason", v);
                }
                r
            }
            Answer::NotFound => StatusCode::NOT_FOUND.into_response(),
        }
    }
}

async fn watch(
    State(ctx): State<Arc<Ctx>>,
    Path(video): Path<String>,
    headers: HeaderMap,
) -> HttpResponse {
    if !valid_video(&video) {
        return ctx.respond(Answer::NotFound);
    }
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let answer = ctx.decide(&video, range_start(range)).await;
    debug!(%video, ?answer, "front-end answer");
    ctx.respond(answer)
}

/// The front-end's routes.
fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/watch/{video}", get(watch))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(ctx)
}

impl Actor for HttpFrontEnd {
    type Msg = ();
    type State = JoinHandle<()>;
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
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (frontend_http): {e}"))?;
        let node = self.cfg.id();
        info!(%node, %addr, "front-end HTTP listening");
        let ctx = Arc::new(Ctx {
            cfg: self.cfg.clone(),
            counters: self.counters.clone(),
            forwarder: self.forwarder.clone(),
        });
        let span = info_span!("frontend", %node);
        Ok(tokio::spawn(
            http::serve(
                l,
                router(ctx),
                HttpLimits::default(),
                self.counters.clone(),
                "frontend",
            )
            .instrument(span),
        ))
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<()>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        st.abort();
        Ok(())
    }
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
        assert!(valid_video("v1.ts"));
        for bad in ["", "..", "a/b", "a b", "x%2f"] {
            assert!(!valid_video(bad), "{bad}");
        }
        let cfg = crate::config::FrontendConfig {
            distributor_command: vec![
                "d".into(),
                "--origin".into(),
                "{origin}".into(),
                "{listen}".into(),
            ],
            origin: "http://o:1".into(),
            bitrate_bps: 500_000,
        };
        let s = spec_for(&cfg, "v1");
        assert_eq!(s.name, "video-v1");
        assert_eq!(s.command, vec!["d", "--origin", "http://o:1", "{listen}"]);
        assert_eq!(s.per_client_bps, Some(500_000));
    }
}
