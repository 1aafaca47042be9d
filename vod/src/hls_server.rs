//! HLS in the distributor: the playlist and segment requests, served from the same shared
//! block cache as progressive viewers (byte-exact slices of the origin's file, written from
//! the shared `Bytes` blocks: no per-session buffers), with sessions as clients.
//!
//! What happens per request (the design is in [`crate::hls`]):
//! - Mode first: after a handoff every HLS request gets `307` to the same path *and query*
//!   at the new distributor (so the session id travels); stopped: `503`; draining: requests
//!   of live sessions are served, a new session gets `503` with `Retry-After`.
//! - The video's segment index is fetched from the origin once (`{video}.segments.json`),
//!   or cut from size and bitrate when the origin has none (404); a checkpoint carries it,
//!   so a restored distributor serves the very same segments without asking the origin.
//! - `GET /{video}.m3u8` opens (or, with `?s=`, refreshes) a session and returns the VOD
//!   playlist with the session in every segment URI.
//! - `GET /{video}/seg/{n}.ts?s=ID` refreshes the session, waits if the session's
//!   [`Allowance`] says it is too far ahead, then writes the bytes of segment `n` (`Range`
//!   within the segment is honoured). A request without `s` is served but counted nowhere.
//! - Every response carries `Access-Control-Allow-Origin: *`: the player page may come from
//!   a front-end on another origin, and browsers follow a cross-origin `307` only with it.
//!
//! Sessions count in `usage.clients` until they have made no request for
//! [`HlsConfig::session_timeout`]; each holds a position in its video's cache (the first
//! block of the segment it will want next), so eviction and read-ahead treat it like a
//! progressive viewer. `handoff` and `stop` release every session at once (they now belong to
//! the new distributor, which got them in the checkpoint or adopts them on their next request).
//!
//! ## Layout
//! - [`HlsConfig`], [`HlsStats`], [`HlsCheckpoint`].
//! - `HlsState`: per-distributor state (indexes, sessions); `serve`: one request, from a
//!   host that implements `HlsHost` (the distributor).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{OnceCell, watch};

use crate::hls::{
    Allowance, INDEX_SUFFIX, Route, RouteError, SegmentIndex, SessionId, Sessions, query_param,
};
use crate::http::Url;
use crate::http::{self, Request, ResponseHead};
use crate::video::{Mode, Stats, VideoEntry, VideoError, VideoMeta, lock, wait_block};

/// Largest segment index accepted from an origin.
const MAX_INDEX_BYTES: usize = 64 << 20;
/// Expired sessions are looked for at most this often on the request path.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// HLS settings of a distributor.
#[derive(Debug, Clone, PartialEq)]
pub struct HlsConfig {
    /// A session without a request for this long is released (no longer a client).
    pub session_timeout: Duration,
    /// Media a session may fetch at once beyond real time (its allowance's capacity).
    pub burst: Duration,
    /// Past the burst, a session fetches at most this many seconds of media per second.
    pub rate_factor: f64,
    /// Segment duration when the origin serves no index (fixed cuts).
    pub fallback_target: Duration,
    /// Sessions at most (a client opening sessions in a loop gets 503).
    pub max_sessions: usize,
}

impl Default for HlsConfig {
    /// 20 s timeout (ten 2 s segments without a request), 10 s burst, 1.5× after it.
    fn default() -> Self {
        Self {
            session_timeout: Duration::from_secs(20),
            burst: Duration::from_secs(10),
            rate_factor: 1.5,
            fallback_target: crate::hls::DEFAULT_TARGET,
            max_sessions: 200_000,
        }
    }
}

/// HLS counters (monotonic).
#[derive(Debug, Default)]
pub struct HlsStats {
    /// Playlists served.
    pub playlists: AtomicU64,
    /// Segment responses started.
    pub segments: AtomicU64,
    /// Segment body bytes written.
    pub segment_bytes: AtomicU64,
    /// Sessions opened or adopted.
    pub sessions_total: AtomicU64,
    /// Segment requests held back by their session's allowance.
    pub delayed: AtomicU64,
    /// Sessions released after their timeout.
    pub expired: AtomicU64,
}

/// The HLS part of a checkpoint: segment indexes (so the target serves identical segments
/// without asking the origin) and live sessions (so it counts them as clients at once).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HlsCheckpoint {
    /// `(video index, index)`.
    pub indexes: Vec<(usize, SegmentIndex)>,
    /// `(video index, session id, byte offset of its position, idle milliseconds)`.
    pub sessions: Vec<(usize, String, u64, u64)>,
}

/// What a distributor keeps per session.
#[derive(Debug)]
struct SessionData {
    entry: Arc<VideoEntry>,
    /// Its position in `entry`'s cache (registered with `add_viewer`).
    block: u64,
    allowance: Allowance,
}

/// Per-distributor HLS state.
#[derive(Debug)]
pub(crate) struct HlsState {
    cfg: HlsConfig,
    indexes: Mutex<HashMap<String, Arc<OnceCell<Arc<SegmentIndex>>>>>,
    sessions: Mutex<Sessions<SessionData>>,
    last_sweep: Mutex<Instant>,
    seed: u64,
    next_id: AtomicU64,
    pub(crate) stats: HlsStats,
}

/// Why a session could not be opened.
enum Refusal {
    Draining,
    Full,
}

impl HlsState {
    pub(crate) fn new(cfg: HlsConfig) -> Self {
        // Ids only need to be unguessable enough not to collide across distributors: a
        // per-process random key (std's hasher keys come from the OS) over a counter.
        let seed = std::hash::RandomState::new().hash_one((std::process::id(), Instant::now()));
        Self {
            sessions: Mutex::new(Sessions::new(cfg.session_timeout, cfg.max_sessions)),
            cfg,
            indexes: Mutex::new(HashMap::new()),
            last_sweep: Mutex::new(Instant::now()),
            seed,
            next_id: AtomicU64::new(0),
            stats: HlsStats::default(),
        }
    }

    fn new_id(&self) -> SessionId {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        // splitmix64 of seed + counter: distinct for distinct counters.
        let mut z = self
            .seed
            .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        SessionId::from_bits(z ^ (z >> 31))
    }

    /// Releases expired sessions (at most once per [`SWEEP_EVERY`] unless `force`).
    fn sweep(&self, now: Instant, force: bool) {
        {
            let mut last = lock(&self.last_sweep);
            if !force && now.saturating_duration_since(*last) < SWEEP_EVERY {
                return;
            }
            *last = now;
        }
        let expired = lock(&self.sessions).sweep(now);
        self.stats
            .expired
            .fetch_add(expired.len() as u64, Ordering::Relaxed);
        release(expired.into_iter().map(|(_, s)| s));
    }

    /// Live sessions now.
    pub(crate) fn clients(&self) -> u64 {
        self.sweep(Instant::now(), true);
        lock(&self.sessions).len() as u64
    }

    /// Releases every session (after a handoff or stop they are not ours any more).
    pub(crate) fn release_all(&self) {
        let all = lock(&self.sessions).drain();
        release(all.into_iter().map(|(_, s)| s));
    }

    /// Opens or refreshes session `id` on `entry`, moving its cache position to `block`
    /// (None: keep it; block 0 for a new session); returns the wait its allowance imposes
    /// for `media_ms` of media.
    fn touch(
        &self,
        id: &SessionId,
        entry: &Arc<VideoEntry>,
        block: Option<u64>,
        media_ms: u64,
        draining: bool,
    ) -> Result<Duration, Refusal> {
        let now = Instant::now();
        self.sweep(now, false);
        let mut sessions = lock(&self.sessions);
        if draining && !sessions.contains(id) {
            return Err(Refusal::Draining);
        }
        let (s, created) = sessions
            .touch(id, now, || SessionData {
                entry: entry.clone(),
                block: block.unwrap_or(0),
                allowance: Allowance::new(now, self.cfg.burst),
            })
            .map_err(|_| Refusal::Full)?;
        let block = block.unwrap_or(if Arc::ptr_eq(&s.entry, entry) {
            s.block
        } else {
            0
        });
        if created {
            lock(&entry.cache).add_viewer(block);
            self.stats.sessions_total.fetch_add(1, Ordering::Relaxed);
        } else if !Arc::ptr_eq(&s.entry, entry) {
            // The same session now watches another video.
            lock(&s.entry.cache).remove_viewer(s.block);
            lock(&entry.cache).add_viewer(block);
            s.entry = entry.clone();
            s.block = block;
        } else if s.block != block {
            lock(&entry.cache).move_viewer(s.block, block);
            s.block = block;
        }
        let wait = s
            .allowance
            .spend(now, media_ms, self.cfg.burst, self.cfg.rate_factor);
        drop(sessions);
        entry.fetch_wake.notify_one();
        Ok(wait)
    }

    /// Moves a session's cache position (after its segment was sent: to the next one).
    fn move_to(&self, id: &SessionId, block: u64) {
        let mut sessions = lock(&self.sessions);
        if let Some(s) = sessions.get_mut(id)
            && s.block != block
        {
            lock(&s.entry.cache).move_viewer(s.block, block);
            s.block = block;
            s.entry.fetch_wake.notify_one();
        }
    }

    /// The segment index of `entry`'s video: from the origin once, else fixed cuts.
    async fn index(&self, origin: &Url, entry: &VideoEntry) -> Result<Arc<SegmentIndex>, String> {
        let cell = lock(&self.indexes)
            .entry(entry.meta.path.clone())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            let url = origin.with_path(&format!("{}{INDEX_SUFFIX}", entry.meta.path));
            let resp = http::get(&url, None, Duration::from_secs(5))
                .await
                .map_err(|e| format!("segment index: {e}"))?;
            let m = &entry.meta;
            match resp.status {
                200 => {
                    let body = resp
                        .body(MAX_INDEX_BYTES, Duration::from_secs(10))
                        .await
                        .map_err(|e| format!("segment index: {e}"))?;
                    let ix = std::str::from_utf8(&body)
                        .map_err(|_| "segment index is not UTF-8".to_string())
                        .and_then(|s| SegmentIndex::from_json(s).map_err(|e| e.to_string()))?;
                    if ix.size != m.size {
                        return Err(format!(
                            "segment index for {} bytes, video has {}",
                            ix.size, m.size
                        ));
                    }
                    Ok(Arc::new(ix))
                }
                // An origin without indexes (a plain file server): cut by size and bitrate.
                404 => Ok(Arc::new(SegmentIndex::fixed(
                    m.size,
                    m.bitrate_bps,
                    m.duration_ms,
                    self.cfg.fallback_target,
                ))),
                s => Err(format!("segment index: origin answered {s}")),
            }
        })
        .await
        .cloned()
    }

    pub(crate) fn checkpoint(&self, videos: &[VideoMeta]) -> HlsCheckpoint {
        let at = |path: &str| videos.iter().position(|v| v.path == path);
        let indexes = lock(&self.indexes)
            .iter()
            .filter_map(|(p, c)| Some((at(p)?, SegmentIndex::clone(c.get()?))))
            .collect();
        let now = Instant::now();
        let sessions = lock(&self.sessions)
            .iter(now)
            .filter_map(|(id, idle, s)| {
                let bs = lock(&s.entry.cache).block_size();
                Some((
                    at(&s.entry.meta.path)?,
                    id.as_str().to_string(),
                    s.block * bs,
                    idle.as_millis() as u64,
                ))
            })
            .collect();
        HlsCheckpoint { indexes, sessions }
    }

    pub(crate) fn restore(&self, cp: HlsCheckpoint, entries: &[Arc<VideoEntry>]) {
        for (vi, ix) in cp.indexes {
            let Some(e) = entries.get(vi) else { continue };
            if ix.size != e.meta.size || ix.check().is_err() {
                continue;
            }
            let cell = lock(&self.indexes)
                .entry(e.meta.path.clone())
                .or_default()
                .clone();
            let _ = cell.set(Arc::new(ix));
        }
        let now = Instant::now();
        let mut sessions = lock(&self.sessions);
        for (vi, id, offset, idle_ms) in cp.sessions {
            let (Some(e), Some(id)) = (entries.get(vi), SessionId::parse(&id)) else {
                continue;
            };
            if sessions.contains(&id) {
                continue;
            }
            let idle = Duration::from_millis(idle_ms).min(self.cfg.session_timeout);
            let block = offset / lock(&e.cache).block_size();
            let data = SessionData {
                entry: e.clone(),
                block,
                allowance: Allowance::new(now, self.cfg.burst),
            };
            if sessions
                .insert_at(id, now.checked_sub(idle).unwrap_or(now), data)
                .is_ok()
            {
                lock(&e.cache).add_viewer(block);
            }
        }
    }
}

fn release(sessions: impl Iterator<Item = SessionData>) {
    for s in sessions {
        lock(&s.entry.cache).remove_viewer(s.block);
        s.entry.fetch_wake.notify_one();
    }
}

/// What HLS needs of the server it runs in (the distributor): its mode, counters, HLS
/// state, origin and videos. A trait here, implemented by the distributor, so that the
/// distributor depends on this module and not the other way round.
pub(crate) trait HlsHost: Send + Sync {
    /// The current mode.
    fn mode(&self) -> Mode;
    /// Follows the mode (for waits that end at a handoff).
    fn mode_watch(&self) -> watch::Receiver<Mode>;
    /// The server's counters.
    fn stats(&self) -> &Stats;
    /// HLS indexes and sessions.
    fn hls(&self) -> &HlsState;
    /// Where the videos come from.
    fn origin_url(&self) -> &Url;
    /// The video at `path`, its cache entry created (and its metadata fetched) on first use.
    fn video(
        self: &Arc<Self>,
        path: &str,
    ) -> impl std::future::Future<Output = Result<Arc<VideoEntry>, VideoError>> + Send;
}

const CORS: (&str, &str) = ("Access-Control-Allow-Origin", "*");

async fn answer<H: HlsHost>(d: &H, stream: &mut TcpStream, status: u16, extra: &[(&str, String)]) {
    if status >= 400 {
        d.stats().errors.fetch_add(1, Ordering::Relaxed);
    }
    let mut h: Vec<(&str, String)> = vec![(CORS.0, CORS.1.to_string())];
    h.extend(extra.iter().cloned());
    http::write_error(stream, status, &h).await;
}

/// Serves one HLS request (the distributor's `handle` routes it here).
pub(crate) async fn serve<H: HlsHost>(
    d: &Arc<H>,
    mut stream: TcpStream,
    req: Request,
    route: Result<Route, RouteError>,
) {
    let route = match route {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(path = %req.path, cause = %e, "bad HLS request");
            return answer(&**d, &mut stream, 400, &[]).await;
        }
    };
    let query = req.query.clone().unwrap_or_default();
    let mode = d.mode();
    match &mode {
        Mode::HandedOff(to) => {
            d.stats().redirects.fetch_add(1, Ordering::Relaxed);
            let path = match &req.query {
                Some(q) => format!("{}?{q}", req.path),
                None => req.path.clone(),
            };
            let loc = to.with_path(&path).to_string();
            return answer(&**d, &mut stream, 307, &[("Location", loc)]).await;
        }
        Mode::Stopped => {
            return answer(&**d, &mut stream, 503, &[("Retry-After", "1".into())]).await;
        }
        Mode::Serving | Mode::Draining => {}
    }
    let draining = mode == Mode::Draining;
    let sid = match query_param(&query, "s") {
        Some(s) => match SessionId::parse(s) {
            Some(id) => Some(id),
            None => return answer(&**d, &mut stream, 400, &[]).await,
        },
        None => None,
    };
    let video = match &route {
        Route::Playlist { video } | Route::Segment { video, .. } => video.as_str(),
    };
    let entry = match d.video(video).await {
        Ok(e) => e,
        Err(VideoError::NotFound) => {
            return answer(&**d, &mut stream, 404, &[]).await;
        }
        Err(e) => {
            tracing::warn!(video, cause = %e, "HLS request: origin failed");
            return answer(&**d, &mut stream, 502, &[]).await;
        }
    };
    let index = match d.hls().index(d.origin_url(), &entry).await {
        Ok(ix) => ix,
        Err(e) => {
            tracing::warn!(video, cause = %e, "HLS request: no segment index");
            return answer(&**d, &mut stream, 502, &[]).await;
        }
    };
    let refused = |r: Refusal| match r {
        Refusal::Draining => "draining",
        Refusal::Full => "too many sessions",
    };
    match route {
        Route::Playlist { .. } => {
            let sid = sid.unwrap_or_else(|| d.hls().new_id());
            if let Err(r) = d.hls().touch(&sid, &entry, None, 0, draining) {
                let reason = refused(r).to_string();
                let extra = [("Retry-After", "1".to_string()), ("X-Reason", reason)];
                return answer(&**d, &mut stream, 503, &extra).await;
            }
            let name = video.rsplit('/').next().unwrap_or(video);
            let body = index.playlist(&format!("{name}/seg/"), &format!("s={}", sid.as_str()));
            let head = ResponseHead::new(200)
                .header("Content-Type", "application/vnd.apple.mpegurl")
                .header("Content-Length", body.len())
                .header("Cache-Control", "no-store")
                .header(CORS.0, CORS.1)
                .header("X-Session", sid.as_str());
            d.hls().stats.playlists.fetch_add(1, Ordering::Relaxed);
            let mut bytes = head.finish();
            if !req.head_only {
                bytes.extend_from_slice(body.as_bytes());
            }
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        }
        Route::Segment { n, .. } => {
            let Some((seg_start, seg_end)) = usize::try_from(n).ok().and_then(|n| index.range(n))
            else {
                return answer(&**d, &mut stream, 404, &[]).await;
            };
            let media_ms = index.duration_ms(n as usize).unwrap_or(0);
            let bs = lock(&entry.cache).block_size();
            if let Some(id) = &sid {
                let wait = match d
                    .hls()
                    .touch(id, &entry, Some(seg_start / bs), media_ms, draining)
                {
                    Ok(w) => w,
                    Err(r) => {
                        let extra = [
                            ("Retry-After", "1".to_string()),
                            ("X-Reason", refused(r).to_string()),
                        ];
                        return answer(&**d, &mut stream, 503, &extra).await;
                    }
                };
                if !wait.is_zero() {
                    d.hls().stats.delayed.fetch_add(1, Ordering::Relaxed);
                    let mut mode = d.mode_watch();
                    let moved = tokio::select! {
                        _ = tokio::time::sleep(wait) => false,
                        _ = mode.wait_for(|m| matches!(m, Mode::HandedOff(_) | Mode::Stopped)) => true,
                    };
                    if moved {
                        // Answer as if the request had come after the handoff.
                        return Box::pin(serve(
                            d,
                            stream,
                            req,
                            Ok(Route::Segment {
                                video: video.to_string(),
                                n,
                            }),
                        ))
                        .await;
                    }
                }
            } else if draining {
                return answer(&**d, &mut stream, 503, &[("Retry-After", "1".into())]).await;
            }
            let len = seg_end - seg_start;
            let (status, a, b) = match req.range.as_deref() {
                None => (200, 0, len),
                Some(r) => match http::parse_range(r)
                    .ok()
                    .and_then(|s| http::resolve_range(s, len))
                {
                    Some((a, b)) => (206, a, b),
                    None => {
                        let cr = ("Content-Range", format!("bytes */{len}"));
                        return answer(&**d, &mut stream, 416, &[cr]).await;
                    }
                },
            };
            let mut head = ResponseHead::new(status)
                .header("Content-Type", "video/mp2t")
                .header("Content-Length", b - a)
                .header("Cache-Control", "no-store")
                .header(CORS.0, CORS.1)
                .header("X-Segment-Offset", seg_start);
            if status == 206 {
                head = head.header("Content-Range", format!("bytes {a}-{}/{len}", b - 1));
            }
            if stream.write_all(&head.finish()).await.is_err() || req.head_only {
                return;
            }
            d.hls().stats.segments.fetch_add(1, Ordering::Relaxed);
            let r = send(&**d, &entry, &mut stream, seg_start + a, seg_start + b).await;
            if let Err(e) = r {
                d.stats().write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(cause = %e, "HLS segment connection ended");
            }
            if let Some(id) = &sid {
                // Its next request will most likely be the next segment: hold that block
                // (the fetcher reads ahead from there while the player plays this one).
                d.hls()
                    .move_to(id, seg_end.min(entry.meta.size.saturating_sub(1)) / bs);
            }
            let _ = stream.shutdown().await;
        }
    }
}

/// Writes bytes `[start, end)` of the video from its cache blocks, waiting for the origin
/// fetcher where a block is missing.
async fn send<H: HlsHost>(
    d: &H,
    entry: &VideoEntry,
    stream: &mut TcpStream,
    start: u64,
    end: u64,
) -> std::io::Result<()> {
    let bs = lock(&entry.cache).block_size();
    let mut mode = d.mode_watch();
    let mut pos = start;
    while pos < end {
        let b = pos / bs;
        let Some(data) = wait_block(entry, b, &mut mode).await else {
            return Err(std::io::Error::other(
                "handed off while waiting for a block",
            ));
        };
        let off = (pos - b * bs) as usize;
        let n = (data.len().saturating_sub(off) as u64).min(end - pos) as usize;
        if n == 0 {
            return Err(std::io::Error::other("short block"));
        }
        stream.write_all(&data[off..off + n]).await?;
        pos += n as u64;
        d.stats().bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
        d.hls()
            .stats
            .segment_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(())
}
