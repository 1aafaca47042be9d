//! HLS viewers for load and QoE tests: each fetches the playlist, then segments in order as a
//! real player does (as fast as allowed until `buffer_goal` of media is buffered, then one
//! segment whenever the buffer falls below it), follows redirects per request, retries a
//! failed segment, and checks every byte.
//!
//! The playback model is [`Playback`] counting milliseconds of media instead of bytes (its
//! rate is 1000 units per second): a segment adds its `EXTINF` duration when its last byte
//! has arrived, as a player appends whole segments to its buffer. Integrity: consecutive
//! segments are consecutive byte ranges of one TS file, so a single [`TsChecker`] fed segment
//! after segment checks continuity across segment boundaries too; a failed fetch's bytes go
//! to a copy of the checker that is dropped, so a retried segment is checked from its start.
//!
//! ## Layout
//! - [`HlsViewerConfig`], [`run_hls_viewer`] (one viewer, reports a [`ViewerReport`]).
//! - [`HlsLoadConfig`], [`run_hls_load`]: N viewers joining over a ramp.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::hls::MediaPlaylist;
use crate::http::{self, ClientResponse, Url};
use crate::ts::TsChecker;
use crate::viewer::{Playback, Shared, ViewerReport};

/// Largest playlist read.
const MAX_PLAYLIST: usize = 16 << 20;
/// Per request: connect and response head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// One HLS viewer's settings.
#[derive(Debug, Clone)]
pub struct HlsViewerConfig {
    /// The playlist (`http://.../{video}.m3u8`), at a distributor or a front-end.
    pub url: Url,
    /// Where to get the playlist again when its server cannot be reached.
    pub frontend: Option<Url>,
    /// Media buffered before playback starts (and restarts after a stall).
    pub start_buffer: Duration,
    /// Media the viewer keeps buffered (hls.js: 30 s by default; 10 s is a small player).
    pub buffer_goal: Duration,
}

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice());
}

enum Fetch {
    /// Complete body of `n` bytes.
    Done(u64),
    /// Network failure or truncated body: retry.
    Failed,
    /// 5xx: retry after the given time.
    Busy(Duration),
    /// Refused for good (4xx).
    Refused(u16),
    /// The run is over.
    Stopped,
}

/// GET with redirects followed (at most 8); returns the final response and its URL.
async fn get_following(url: &Url) -> Result<(ClientResponse, Url), ()> {
    let mut url = url.clone();
    for _ in 0..=8 {
        let resp = http::get(&url, None, HEAD_TIMEOUT).await.map_err(|_| ())?;
        if (300..400).contains(&resp.status) {
            url = resp
                .header("location")
                .and_then(|l| url.join(l).ok())
                .ok_or(())?;
            continue;
        }
        return Ok((resp, url));
    }
    Err(())
}

fn retry_after(resp: &ClientResponse) -> Duration {
    Duration::from_secs(resp.header_u64("retry-after").unwrap_or(1).clamp(1, 10))
}

/// Reads a segment body into `checker` (when it completes) and counts redirects.
async fn fetch_segment(
    url: &Url,
    checker: &mut TsChecker,
    report: &mut ViewerReport,
    stop: &mut watch::Receiver<bool>,
) -> Fetch {
    let mut u = url.clone();
    let mut resp = None;
    for _ in 0..=8 {
        let r = tokio::select! {
            r = http::get(&u, None, HEAD_TIMEOUT) => r,
            _ = stop.wait_for(|s| *s) => return Fetch::Stopped,
        };
        let Ok(r) = r else { return Fetch::Failed };
        if (300..400).contains(&r.status) {
            report.redirects += 1;
            match r.header("location").and_then(|l| u.join(l).ok()) {
                Some(next) => u = next,
                None => return Fetch::Failed,
            }
            continue;
        }
        resp = Some(r);
        break;
    }
    let Some(resp) = resp else {
        return Fetch::Failed;
    };
    match resp.status {
        200 => {}
        500..=599 => return Fetch::Busy(retry_after(&resp)),
        s => return Fetch::Refused(s),
    }
    let Some(len) = resp.header_u64("content-length") else {
        return Fetch::Failed;
    };
    let mut trial = checker.clone();
    let mut got = resp.leftover.len() as u64;
    trial.feed(&resp.leftover);
    let stream = resp.stream;
    while got < len {
        let ready = tokio::select! {
            r = tokio::time::timeout(HEAD_TIMEOUT, stream.readable()) => matches!(r, Ok(Ok(()))),
            _ = stop.wait_for(|s| *s) => return Fetch::Stopped,
        };
        if !ready {
            return Fetch::Failed;
        }
        let n = SCRATCH.with_borrow_mut(|buf| {
            let want = buf.len().min((len - got) as usize);
            match stream.try_read(&mut buf[..want]) {
                Ok(0) => Err(()),
                Ok(n) => {
                    trial.feed(&buf[..n]);
                    Ok(n as u64)
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
                Err(_) => Err(()),
            }
        });
        match n {
            Ok(n) => got += n,
            Err(()) => return Fetch::Failed,
        }
    }
    *checker = trial;
    Fetch::Done(len)
}

async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}

/// Fetches and parses the playlist; returns it with the URL segment URIs resolve against.
async fn load_playlist(
    cfg: &HlsViewerConfig,
    report: &mut ViewerReport,
    stop: &mut watch::Receiver<bool>,
) -> Option<(MediaPlaylist, Url)> {
    let mut url = cfg.url.clone();
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            return None;
        }
        let backoff = Duration::from_millis((10u64 << failures.min(6)).min(500));
        let r = tokio::select! {
            r = get_following(&url) => r,
            _ = stop.wait_for(|s| *s) => return None,
        };
        match r {
            Ok((resp, base)) if resp.status == 200 => {
                let body = resp.body(MAX_PLAYLIST, Duration::from_secs(10)).await;
                let parsed = body
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|t| MediaPlaylist::parse(&t).ok());
                match parsed {
                    Some(p) if !p.segments.is_empty() => return Some((p, base)),
                    _ => {
                        report.integrity_errors += 1;
                        return None;
                    }
                }
            }
            Ok((resp, _)) if resp.status >= 500 => {
                if sleep_or_stop(retry_after(&resp), stop).await {
                    return None;
                }
            }
            Ok((resp, _)) => {
                report.http_error = Some(resp.status);
                return None;
            }
            Err(()) => {
                failures += 1;
                if let Some(fe) = &cfg.frontend {
                    url = fe.clone();
                }
                if sleep_or_stop(backoff, stop).await {
                    return None;
                }
            }
        }
    }
}

/// Runs one HLS viewer until it has played the whole playlist's media into its buffer,
/// is refused, or `stop` is set.
pub async fn run_hls_viewer(
    cfg: &HlsViewerConfig,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) -> ViewerReport {
    let t0 = Instant::now();
    let mut report = ViewerReport::default();
    // Units are milliseconds of media: 8000 "bits" per second is 1000 units per second.
    let mut play = Playback::new(8000, cfg.start_buffer);
    let mut checker = TsChecker::new(0);
    let goal_ms = cfg.buffer_goal.as_secs_f64() * 1000.0;
    if let Some((playlist, base)) = load_playlist(cfg, &mut report, &mut stop).await {
        let total_ms: f64 = playlist.segments.iter().map(|s| s.0 * 1000.0).sum();
        play.set_total(total_ms.round() as u64);
        let mut k = 0;
        let mut failures = 0u32;
        let mut failed_at: Option<Instant> = None;
        // When the current segment was first asked for.
        let mut asked_at: Option<Instant> = None;
        while k < playlist.segments.len() {
            let now = t0.elapsed();
            let buffered = play.buffered_ms(now);
            if buffered >= goal_ms && play.startup.is_some() {
                // Wait until the buffer is below the goal again.
                let wait = Duration::from_secs_f64((buffered - goal_ms) / 1000.0 + 0.001);
                if sleep_or_stop(wait, &mut stop).await {
                    break;
                }
                continue;
            }
            let (dur_s, uri) = &playlist.segments[k];
            let Ok(url) = base.join(uri) else {
                report.integrity_errors += 1;
                break;
            };
            let asked = *asked_at.get_or_insert_with(Instant::now);
            match fetch_segment(&url, &mut checker, &mut report, &mut stop).await {
                Fetch::Done(n) => {
                    let now_i = Instant::now();
                    asked_at = None;
                    let waited = now_i.duration_since(asked).as_secs_f64() * 1000.0;
                    report.longest_wait_ms = report.longest_wait_ms.max(waited);
                    if let Some(at) = failed_at.take() {
                        report
                            .gaps_ms
                            .push(now_i.duration_since(at).as_secs_f64() * 1000.0);
                        let us = now_i.duration_since(shared.base).as_micros() as u64;
                        shared.note_resume(us);
                    }
                    failures = 0;
                    play.on_data(now_i.duration_since(t0), (dur_s * 1000.0).round() as u64);
                    report.bytes += n;
                    report.offset += n;
                    k += 1;
                }
                Fetch::Stopped => break,
                Fetch::Refused(s) => {
                    report.http_error = Some(s);
                    break;
                }
                f @ (Fetch::Failed | Fetch::Busy(_)) => {
                    if failed_at.is_none() {
                        failed_at = Some(Instant::now());
                        report.reconnects += 1;
                        report
                            .buffered_at_disconnect_ms
                            .push(play.buffered_ms(t0.elapsed()));
                    }
                    failures += 1;
                    let wait = match f {
                        Fetch::Busy(d) => d,
                        _ => Duration::from_millis((10u64 << failures.min(6)).min(500)),
                    };
                    if sleep_or_stop(wait, &mut stop).await {
                        break;
                    }
                }
            }
        }
        report.completed = k == playlist.segments.len();
    }
    let now = t0.elapsed();
    play.finish(now);
    report.startup_ms = play.startup.map(|d| d.as_secs_f64() * 1000.0);
    report.stalls = play.stalls;
    report.rebuffer_ms = play.rebuffer.as_secs_f64() * 1000.0;
    report.session_ms = now.as_secs_f64() * 1000.0;
    report.integrity_errors += checker.errors();
    report.silences_ms = report.gaps_ms.clone();
    shared.bytes.fetch_add(report.bytes, Ordering::Relaxed);
    report
}

/// An HLS load run.
#[derive(Debug, Clone)]
pub struct HlsLoadConfig {
    /// Settings shared by every viewer.
    pub viewer: HlsViewerConfig,
    /// Number of viewers.
    pub clients: usize,
    /// Viewers join evenly over this time.
    pub ramp: Duration,
    /// Each viewer stops this long after the start of the run.
    pub duration: Duration,
}

/// Runs the viewers of `cfg` (see [`crate::viewer::run_load`] for the progressive twin).
pub async fn run_hls_load(cfg: &HlsLoadConfig, shared: Arc<Shared>) -> Vec<ViewerReport> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let vcfg = Arc::new(cfg.viewer.clone());
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..cfg.clients)
        .map(|i| {
            let delay = cfg.ramp.mul_f64(i as f64 / cfg.clients.max(1) as f64);
            let (v, sh, rx) = (vcfg.clone(), shared.clone(), stop_rx.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(start + delay).await;
                run_hls_viewer(&v, &sh, rx).await
            })
        })
        .collect();
    tokio::time::sleep_until(start + cfg.duration).await;
    let _ = stop_tx.send(true);
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(r) = t.await {
            out.push(r);
        }
    }
    out
}
