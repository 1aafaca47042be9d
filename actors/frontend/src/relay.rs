//! Relaying a distributor's response to a viewer across node deaths and migrations.
//!
//! The viewer's connection is to the front-end; the front-end fetches the same resource (a
//! progressive video, an HLS segment or playlist) from the distributor the Control placed
//! and streams the body back. When the upstream connection breaks before the end (the
//! node was killed, the distributor handed its viewers off, the node went silent and this
//! node's membership declared it dead), the front-end locates the service again
//! ([`Placements::current`]) and asks the new distributor for the rest with
//! `Range: bytes={next}-`: the viewer sees one response, possibly with a pause, never a
//! gap or a repeated byte. Redirects within the same distributor are followed; a redirect
//! elsewhere (`307` after a handoff) is not (endpoints come from the Control only) but
//! tells the relay the viewers were handed off, so it asks the Control at once until it
//! names the new endpoint ([`Placements::moved`]); `503` (draining, stopped), `5xx` and
//! unreachable endpoints are retried until [`RelayCfg::resume_deadline`].
//!
//! The upstream side is hyper's HTTP/1.1 client, one connection per request (the
//! distributor closes after each response). Body chunks are handed from hyper's read
//! buffer to the viewer's response as they are (`Bytes`, no copy in between), so the cost
//! of a relayed viewer is one read and one write system call per chunk, the upstream
//! connection, and the front-end's NIC carrying the viewer's bitrate twice (in and out).
//!
//! ## Layout
//! - [`Resource`], [`RelayCfg`], [`RelayError`].
//! - [`open`]: one upstream response positioned at a byte; [`Upstream`].
//! - [`Relay`], [`body`]: the resuming body stream.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request as HttpRequest, StatusCode, Uri, header};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use smart_proto::NodeId;
use smart_proto::api::ApiError;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::placements::Placements;
use smart_node::counters::Counters;

/// Redirects followed per attempt (a handoff gives one).
const MAX_REDIRECTS: usize = 4;

/// What to fetch: a path (with query) under the distributor's base URL.
#[derive(Debug, Clone)]
pub(super) struct Resource {
    /// The video (whose service is located).
    pub video: String,
    /// Path and query relative to the distributor's endpoint, e.g. `v1` or
    /// `v1/seg/3.ts?s=ab12`.
    pub path: String,
}

/// Timeouts of a relay.
#[derive(Debug, Clone, Copy)]
pub(super) struct RelayCfg {
    /// Connect plus response head (an HLS segment may be held back by its session's
    /// allowance: this must be longer than that).
    pub head_timeout: Duration,
    /// No body byte for this long: the upstream is treated as broken and resumed.
    pub idle_timeout: Duration,
    /// How long to keep trying to reach the service when an upstream breaks.
    pub resume_deadline: Duration,
}

/// Why a resource could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum RelayError {
    /// No such video or segment (the Control or the distributor said so).
    #[error("not found")]
    NotFound,
    /// The range starts past the end of a resource of `total` bytes.
    #[error("range not satisfiable (size {total})")]
    Range {
        /// The resource's size.
        total: u64,
    },
    /// The distributor refused the request for good (4xx).
    #[error("the distributor answered {0}")]
    Refused(u16),
    /// No distributor could be reached before the deadline.
    #[error("service unavailable: {0}")]
    Unavailable(String),
}

/// An upstream response whose body starts at the byte asked for, of a resource of `total`
/// bytes.
#[derive(Debug)]
pub(super) struct Upstream {
    headers: HeaderMap,
    body: Incoming,
    /// The node serving it.
    pub node: NodeId,
    /// The resource's size.
    pub total: u64,
}

impl Upstream {
    /// A response header.
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next body chunk; `Ok(None)` at the end of the body.
    async fn chunk(&mut self) -> Result<Option<Bytes>, hyper::Error> {
        loop {
            let frame =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.body).poll_frame(cx));
            match frame.await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e),
                // Trailers carry no bytes of the resource.
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data()
                        && !data.is_empty()
                    {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The whole body (small resources: playlists), at most `limit` bytes.
    pub(super) async fn into_body(
        mut self,
        limit: usize,
        timeout: Duration,
    ) -> io::Result<Vec<u8>> {
        let want = self.total as usize;
        if want > limit {
            return Err(io::Error::other(format!("body larger than {limit} bytes")));
        }
        let mut out = Vec::with_capacity(want);
        let read = async {
            while let Some(c) = self.chunk().await.map_err(io::Error::other)? {
                out.extend_from_slice(&c);
                if out.len() > want {
                    return Err(io::Error::other("body longer than its Content-Length"));
                }
            }
            Ok(())
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "body timed out"))??;
        if out.len() != want {
            return Err(io::Error::other("body shorter than its Content-Length"));
        }
        Ok(out)
    }
}

/// Resolves when this node's membership stops listing a node as a live agent.
pub(super) struct NodeWatch(tokio::sync::watch::Receiver<smart_membership::view::ClusterView>);

impl NodeWatch {
    pub(super) fn new(p: &Placements) -> Self {
        Self(p.forwarder().view.clone())
    }

    async fn gone(&mut self, node: NodeId) {
        loop {
            if !self
                .0
                .borrow_and_update()
                .agents
                .iter()
                .any(|a| a.node == node)
            {
                return;
            }
            if self.0.changed().await.is_err() {
                // Membership is restarting: no news is not a death.
                std::future::pending::<()>().await;
            }
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((25u64 << attempt.min(4)).min(250))
}

/// `base` (an endpoint, `http://host:port/`) joined with a relative `path`, or a
/// `Location` resolved against the URI it answered.
pub(super) fn join(base: &Uri, location: &str) -> Option<Uri> {
    if location.starts_with("http://") {
        return location.parse().ok();
    }
    let authority = base.authority()?;
    let path = if location.starts_with('/') {
        location.to_string()
    } else {
        let dir = base.path();
        let dir = &dir[..dir.rfind('/').map_or(0, |i| i + 1)];
        format!("{dir}{location}")
    };
    Uri::builder()
        .scheme("http")
        .authority(authority.clone())
        .path_and_query(path)
        .build()
        .ok()
}

/// Whether `next` is on the server `uri` names (same host and port).
fn same_server(uri: &Uri, next: &Uri) -> bool {
    let port = |u: &Uri| u.port_u16().unwrap_or(80);
    uri.host() == next.host() && port(uri) == port(next)
}

/// One `GET` with `Range: bytes={from}-` when `from > 0`: connect, send, read the head.
async fn get(uri: &Uri, from: u64) -> Result<hyper::Response<Incoming>, String> {
    let authority = uri.authority().ok_or("no authority")?;
    let tcp = TcpStream::connect((authority.host(), authority.port_u16().unwrap_or(80)))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    // Drives the connection; it ends with the response (the distributor closes).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = HttpRequest::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, authority.as_str())
        .header(header::USER_AGENT, "smart-frontend");
    if from > 0 {
        req = req.header(header::RANGE, format!("bytes={from}-"));
    }
    let req = req.body(Body::empty()).map_err(|e| e.to_string())?;
    tx.send_request(req).await.map_err(|e| e.to_string())
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `(first byte, total)` of `Content-Range: bytes a-b/total`.
fn content_range(h: &HeaderMap) -> Option<(u64, u64)> {
    let v = h
        .get(header::CONTENT_RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes ")?;
    let (range, total) = v.split_once('/')?;
    let (a, _) = range.split_once('-')?;
    Some((a.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// Opens `res` at byte `from` at its current distributor, retrying unreachable,
/// redirecting and busy distributors until `deadline`.
pub(super) async fn open(
    placements: &Placements,
    res: &Resource,
    from: u64,
    cfg: &RelayCfg,
    deadline: Instant,
    counters: &Counters,
) -> Result<Upstream, RelayError> {
    let mut broken: Option<String> = None;
    let mut attempt = 0u32;
    let mut gone = NodeWatch::new(placements);
    // A distributor redirecting elsewhere has handed its viewers off: the Control already
    // names the target. The next attempt asks at once (once per opening: a distributor
    // that keeps redirecting gets the usual backoff).
    let (mut handed_off, mut fast_used) = (false, false);
    loop {
        if attempt > 0 {
            if Instant::now() >= deadline {
                return Err(RelayError::Unavailable(
                    "the service could not be reached in time".into(),
                ));
            }
            if !handed_off {
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
        attempt += 1;
        let asked = if std::mem::take(&mut handed_off) {
            placements
                .moved(&res.video, broken.as_deref().unwrap_or_default())
                .await
        } else {
            placements.current(&res.video, broken.as_deref()).await
        };
        let p = match asked {
            Ok(p) => p,
            Err(ApiError::NotFound { .. }) => return Err(RelayError::NotFound),
            Err(e) => {
                debug!(video = %res.video, cause = %e, "no usable placement yet; retrying");
                continue;
            }
        };
        let Some(mut uri) = p
            .endpoint
            .parse::<Uri>()
            .ok()
            .and_then(|b| join(&b, &res.path))
        else {
            return Err(RelayError::Unavailable(format!(
                "bad endpoint {:?}",
                p.endpoint
            )));
        };
        let mut redirects = 0;
        let outcome = loop {
            let timeout = cfg
                .head_timeout
                .min(deadline.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(200));
            let r = tokio::select! {
                r = tokio::time::timeout(timeout, get(&uri, from)) => {
                    r.unwrap_or_else(|_| Err("timed out".into()))
                }
                _ = gone.gone(p.node) => Err("its node was declared dead".into()),
            };
            let resp = match r {
                Ok(resp) => resp,
                Err(e) => break Err(e),
            };
            let (parts, body) = resp.into_parts();
            let h = &parts.headers;
            match parts.status {
                s if s.is_redirection() && redirects < MAX_REDIRECTS => {
                    let next = h
                        .get(header::LOCATION)
                        .and_then(|l| l.to_str().ok())
                        .and_then(|l| join(&uri, l));
                    match next {
                        Some(next) if same_server(&uri, &next) => {
                            uri = next;
                            redirects += 1;
                            continue;
                        }
                        // Endpoints come from the Control's answers only: a distributor (or
                        // whoever answers in its place) cannot send the relay elsewhere
                        // (an internal address, another node's `/metrics`). The placement
                        // is asked for again.
                        Some(next) => {
                            if !fast_used {
                                fast_used = true;
                                handed_off = true;
                            }
                            break Err(format!(
                                "redirect {s} to another server ({next}) not followed"
                            ));
                        }
                        None => break Err(format!("redirect {s} without a usable Location")),
                    }
                }
                StatusCode::OK if from == 0 => match content_length(h) {
                    Some(total) => {
                        break Ok(Upstream {
                            headers: parts.headers,
                            body,
                            node: p.node,
                            total,
                        });
                    }
                    None => break Err("no Content-Length".into()),
                },
                StatusCode::PARTIAL_CONTENT => match content_range(h) {
                    Some((start, total)) if start == from => {
                        break Ok(Upstream {
                            headers: parts.headers,
                            body,
                            node: p.node,
                            total,
                        });
                    }
                    _ => break Err("206 for another range".into()),
                },
                StatusCode::NOT_FOUND => return Err(RelayError::NotFound),
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    let total = h
                        .get(header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("bytes */"))
                        .and_then(|n| n.trim().parse().ok())
                        .unwrap_or(0);
                    return Err(RelayError::Range { total });
                }
                s if s.is_client_error() => return Err(RelayError::Refused(s.as_u16())),
                s => break Err(format!("answered {s}")),
            }
        };
        match outcome {
            Ok(up) => return Ok(up),
            Err(why) => {
                debug!(video = %res.video, endpoint = %p.endpoint, cause = %why, "distributor unusable; locating again");
                counters.incr("frontend_relay_retries");
                broken = Some(p.endpoint);
            }
        }
    }
}

/// A relayed body: bytes `[pos, end)` of a resource of `total` bytes, resumed elsewhere
/// when its upstream breaks.
pub(super) struct Relay {
    /// Where the service is.
    pub placements: Arc<Placements>,
    /// What is relayed.
    pub res: Resource,
    /// Next byte to send.
    pub pos: u64,
    /// One past the last byte to send.
    pub end: u64,
    /// The resource's size (a resumed upstream must agree).
    pub total: u64,
    /// The current upstream, if connected.
    pub up: Option<Upstream>,
    /// Timeouts.
    pub cfg: RelayCfg,
    /// Node counters (`frontend_relay_resumes`: a body resumed after its upstream broke;
    /// `frontend_relay_failures`: could not resume; `frontend_relay_retries`: an attempt
    /// that met an unusable distributor).
    pub counters: Arc<Counters>,
    /// Dropped with the body: admission releases, session activity.
    pub _guards: Vec<Box<dyn Send + Sync>>,
    /// When the upstream was seen broken, until the first byte of its replacement.
    pub broke_at: Option<Instant>,
}

/// Upper bounds of the resume-pause buckets, ms, and their counters' names (cumulative,
/// as a Prometheus histogram's: a pause counts in every bucket at or above it).
pub const RESUME_BUCKETS: [(u64, &str); 9] = [
    (10, "frontend_relay_resume_le_10ms"),
    (25, "frontend_relay_resume_le_25ms"),
    (50, "frontend_relay_resume_le_50ms"),
    (100, "frontend_relay_resume_le_100ms"),
    (200, "frontend_relay_resume_le_200ms"),
    (500, "frontend_relay_resume_le_500ms"),
    (1_000, "frontend_relay_resume_le_1s"),
    (2_000, "frontend_relay_resume_le_2s"),
    (5_000, "frontend_relay_resume_le_5s"),
];

/// The `q` quantile of the pauses counted in `counters` (name → value, e.g. the difference
/// of two snapshots) as the upper bound of its bucket, ms; `None` when no resume was
/// counted, `Some(f64::INFINITY)` when it lies over the last bucket.
pub fn resume_quantile(counters: &dyn Fn(&str) -> u64, q: f64) -> Option<f64> {
    let total = RESUME_BUCKETS
        .last()
        .map_or(0, |(_, name)| counters(name))
        .saturating_add(counters("frontend_relay_resume_over_5s"));
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    Some(
        RESUME_BUCKETS
            .iter()
            .find(|(_, name)| counters(name) >= rank)
            .map_or(f64::INFINITY, |(le, _)| *le as f64),
    )
}

/// Records one resume's pause (from the upstream seen broken to the first byte of the
/// next): a cumulative histogram in counters (`frontend_relay_resume_le_*`, `_over_5s`),
/// with `frontend_relay_resume_ms_sum` and `frontend_relay_resume_ms_max`.
fn record_resume(counters: &Counters, pause: Duration) {
    let ms = pause.as_millis().min(u64::MAX as u128) as u64;
    let mut within = false;
    for (le, name) in RESUME_BUCKETS {
        if ms <= le {
            counters.incr(name);
            within = true;
        }
    }
    if !within {
        counters.incr("frontend_relay_resume_over_5s");
    }
    counters.add("frontend_relay_resume_ms_sum", ms);
    counters.raise("frontend_relay_resume_ms_max", ms);
}

impl Relay {
    async fn next(&mut self, gone: &mut NodeWatch) -> Option<io::Result<Bytes>> {
        loop {
            if self.pos >= self.end {
                return None;
            }
            if self.up.is_none() {
                self.counters.incr("frontend_relay_resumes");
                let deadline = Instant::now() + self.cfg.resume_deadline;
                match open(
                    &self.placements,
                    &self.res,
                    self.pos,
                    &self.cfg,
                    deadline,
                    &self.counters,
                )
                .await
                {
                    Ok(u) if u.total == self.total => self.up = Some(u),
                    Ok(u) => {
                        self.counters.incr("frontend_relay_failures");
                        return Some(Err(io::Error::other(format!(
                            "{} changed size: {} then {} bytes",
                            self.res.path, self.total, u.total
                        ))));
                    }
                    Err(e) => {
                        self.counters.incr("frontend_relay_failures");
                        return Some(Err(io::Error::other(e.to_string())));
                    }
                }
            }
            let up = self.up.as_mut().expect("connected above");
            let node = up.node;
            let r = tokio::select! {
                r = tokio::time::timeout(self.cfg.idle_timeout, up.chunk()) => match r {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("distributor silent".into()),
                },
                _ = gone.gone(node) => Err("its node was declared dead".into()),
            };
            match r {
                Ok(Some(mut c)) => {
                    if let Some(at) = self.broke_at.take() {
                        record_resume(&self.counters, at.elapsed());
                    }
                    let left = self.end - self.pos;
                    if c.len() as u64 > left {
                        c.truncate(left as usize);
                    }
                    self.pos += c.len() as u64;
                    return Some(Ok(c));
                }
                Ok(None) => {
                    debug!(path = %self.res.path, at = self.pos, "upstream ended early; resuming");
                    self.up = None;
                    self.broke_at.get_or_insert_with(Instant::now);
                }
                Err(why) => {
                    debug!(path = %self.res.path, at = self.pos, cause = %why, "upstream broke; resuming");
                    self.up = None;
                    self.broke_at.get_or_insert_with(Instant::now);
                }
            }
        }
    }
}

/// The body of `relay` for an HTTP response. A relay that cannot resume ends the body with
/// an error: hyper then cuts the viewer's connection short of its `Content-Length`, which
/// is how the viewer learns it must reconnect.
pub(super) fn body(relay: Relay) -> Body {
    let gone = NodeWatch::new(&relay.placements);
    Body::from_stream(futures::stream::unfold(
        Some((relay, gone)),
        |st| async move {
            let (mut relay, mut gone) = st?;
            match relay.next(&mut gone).await {
                Some(Ok(b)) => Some((Ok(b), Some((relay, gone)))),
                Some(Err(e)) => Some((Err(e), None)),
                None => None,
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_pause_lands_in_every_bucket_at_or_above_it() {
        let c = Counters::default();
        record_resume(&c, Duration::from_millis(120));
        record_resume(&c, Duration::from_millis(30));
        record_resume(&c, Duration::from_secs(7));
        let m = c.snapshot();
        let get = |k: &str| m.get(k).copied().unwrap_or(0);
        assert_eq!(get("frontend_relay_resume_le_50ms"), 1);
        assert_eq!(get("frontend_relay_resume_le_200ms"), 2);
        assert_eq!(get("frontend_relay_resume_le_1s"), 2);
        assert_eq!(get("frontend_relay_resume_le_5s"), 2);
        assert_eq!(get("frontend_relay_resume_over_5s"), 1);
        assert_eq!(get("frontend_relay_resume_ms_sum"), 7_150);
        assert_eq!(get("frontend_relay_resume_ms_max"), 7_000);
        assert_eq!(resume_quantile(&get, 0.3), Some(50.0));
        assert_eq!(resume_quantile(&get, 0.5), Some(200.0));
        assert_eq!(resume_quantile(&get, 0.99), Some(f64::INFINITY));
        assert_eq!(resume_quantile(&|_: &str| 0, 0.99), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(2), Duration::from_millis(100));
        assert_eq!(backoff(30), Duration::from_millis(250));
    }

    #[test]
    fn joins_paths_and_locations() {
        let base: Uri = "http://127.0.0.1:9001/".parse().unwrap();
        let j = |b: &Uri, l: &str| join(b, l).map(|u| u.to_string());
        assert_eq!(
            j(&base, "v1/seg/3.ts?s=ab").as_deref(),
            Some("http://127.0.0.1:9001/v1/seg/3.ts?s=ab")
        );
        let seg: Uri = "http://127.0.0.1:9001/v1/seg/3.ts?s=ab".parse().unwrap();
        assert_eq!(
            j(&seg, "http://127.0.0.2:9002/v1/seg/3.ts?s=ab").as_deref(),
            Some("http://127.0.0.2:9002/v1/seg/3.ts?s=ab")
        );
        assert_eq!(j(&seg, "/v1").as_deref(), Some("http://127.0.0.1:9001/v1"));
        assert_eq!(
            j(&seg, "4.ts").as_deref(),
            Some("http://127.0.0.1:9001/v1/seg/4.ts")
        );
        assert_eq!(j(&seg, "http://bad host/"), None);
    }

    /// A redirect is followed only on the same server: never to another host or port.
    #[test]
    fn redirects_stay_on_the_placements_server() {
        let u = |s: &str| s.parse::<Uri>().unwrap();
        let seg = u("http://127.0.0.1:9001/v1/seg/3.ts");
        assert!(same_server(&seg, &u("http://127.0.0.1:9001/v1/seg/4.ts")));
        assert!(!same_server(&seg, &u("http://127.0.0.1:7100/metrics")));
        assert!(!same_server(&seg, &u("http://10.0.0.9:9001/v1/seg/3.ts")));
    }

    #[test]
    fn content_ranges() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, "bytes 100-199/1000".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "100".parse().unwrap());
        assert_eq!(content_range(&h), Some((100, 1000)));
        assert_eq!(content_length(&h), Some(100));
        h.insert(header::CONTENT_RANGE, "bytes */1000".parse().unwrap());
        assert_eq!(content_range(&h), None);
    }
}
