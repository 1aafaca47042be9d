//! Viewers and the load generator: a playback model, one viewer's connection loop (integrity,
//! reconnect, redirect, resume at the exact byte) and the QoE summary.
//!
//! A viewer keeps no media buffer: bytes are read into a per-thread scratch buffer, checked
//! ([`crate::ts::TsChecker`]) and counted. The playback buffer is a model ([`Playback`]): it
//! starts after a threshold, drains at the bitrate, and stalls are computed exactly (in
//! retrospect, at the next arrival), so 10k viewers need no timers.
//!
//! Pacing error is measured per read: the bytes of a connection should arrive no later than
//! `start + (bytes - prefetch) / rate`; the lateness (0 when early) goes to a shared histogram.
//!
//! ## Layout
//! - [`Playback`]: pure playback-buffer model.
//! - [`ViewerConfig`], [`run_viewer`], [`ViewerReport`]: one viewer; [`run_viewer_watched`]
//!   with [`Progress`], its live figures (a fault test watches each viewer while it plays).
//! - [`Histogram`], [`LoadConfig`], [`run_load`], [`QoeSummary`]: the load generator.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::http::{self, Url};
use crate::ts::TsChecker;

#[derive(Debug, Clone, Copy, PartialEq)]
enum PlayState {
    Startup,
    Playing { since: Duration, played: u64 },
    Rebuffering { since: Duration, played: u64 },
    Ended,
}

/// Playback buffer model. Times are offsets from the viewer's start.
#[derive(Debug, Clone)]
pub struct Playback {
    rate: f64,
    threshold: u64,
    total: Option<u64>,
    received: u64,
    state: PlayState,
    /// Time from start to first play.
    pub startup: Option<Duration>,
    /// Stalls (buffer ran dry while the video had not ended).
    pub stalls: u32,
    /// Total time spent rebuffering.
    pub rebuffer: Duration,
}

impl Playback {
    /// A player draining `rate_bps` bits/s that starts (and restarts) once `threshold` of
    /// video is buffered.
    pub fn new(rate_bps: u64, threshold: Duration) -> Self {
        let rate = rate_bps.max(1) as f64 / 8.0;
        Self {
            rate,
            threshold: (rate * threshold.as_secs_f64()) as u64,
            total: None,
            received: 0,
            state: PlayState::Startup,
            startup: None,
            stalls: 0,
            rebuffer: Duration::ZERO,
        }
    }

    /// Sets the video's total size (playback ends there instead of stalling).
    pub fn set_total(&mut self, total: u64) {
        self.total = Some(total);
    }

    /// Sets the drain rate once the real bitrate is known.
    pub fn set_rate(&mut self, rate_bps: u64, threshold: Duration) {
        self.rate = rate_bps.max(1) as f64 / 8.0;
        self.threshold = (self.rate * threshold.as_secs_f64()) as u64;
    }

    /// Bytes played by time `now`.
    pub fn played(&self, now: Duration) -> u64 {
        match self.state {
            PlayState::Startup => 0,
            PlayState::Playing { since, played } => (played
                + (self.rate * now.saturating_sub(since).as_secs_f64()) as u64)
                .min(self.received),
            PlayState::Rebuffering { played, .. } => played,
            PlayState::Ended => self.received,
        }
    }

    /// Buffered video at `now`, in milliseconds.
    pub fn buffered_ms(&self, now: Duration) -> f64 {
        (self.received - self.played(now)) as f64 / self.rate * 1000.0
    }

    fn advance(&mut self, now: Duration) {
        if let PlayState::Playing { since, played } = self.state {
            let would = played as f64 + self.rate * now.saturating_sub(since).as_secs_f64();
            if would >= self.received as f64 {
                if self.total.is_some_and(|t| self.received >= t) {
                    self.state = PlayState::Ended;
                } else {
                    let dry = since
                        + Duration::from_secs_f64((self.received - played) as f64 / self.rate);
                    self.state = PlayState::Rebuffering {
                        since: dry,
                        played: self.received,
                    };
                    self.stalls += 1;
                }
            }
        }
    }

    /// `n` bytes arrived at `now`.
    pub fn on_data(&mut self, now: Duration, n: u64) {
        self.advance(now);
        self.received += n;
        let complete = self.total.is_some_and(|t| self.received >= t);
        match self.state {
            PlayState::Startup if self.received >= self.threshold || complete => {
                self.startup = Some(now);
                self.state = PlayState::Playing {
                    since: now,
                    played: 0,
                };
            }
            PlayState::Rebuffering { since, played }
                if self.received - played >= self.threshold || complete =>
            {
                self.rebuffer += now.saturating_sub(since);
                self.state = PlayState::Playing { since: now, played };
            }
            _ => {}
        }
    }

    /// Ends the session at `now`, counting a stall still in progress.
    pub fn finish(&mut self, now: Duration) {
        self.advance(now);
        if let PlayState::Rebuffering { since, .. } = self.state {
            self.rebuffer += now.saturating_sub(since);
            self.state = PlayState::Rebuffering {
                since: now,
                played: self.received,
            };
        }
    }
}

/// Lock-free latency histogram in milliseconds (1 ms buckets to 1 s, 10 ms to 60 s).
#[derive(Debug)]
pub struct Histogram {
    buckets: Vec<AtomicU64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..7_000).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    fn index(ms: f64) -> usize {
        let ms = ms.max(0.0) as usize;
        if ms < 1000 {
            ms
        } else {
            (1000 + (ms - 1000) / 10).min(6_999)
        }
    }

    fn value(i: usize) -> f64 {
        if i < 1000 {
            i as f64
        } else {
            1000.0 + (i - 1000) as f64 * 10.0
        }
    }

    /// Records one sample.
    pub fn record(&self, ms: f64) {
        self.record_n(ms, 1);
    }

    /// Records `n` samples of the same value.
    pub fn record_n(&self, ms: f64, n: u64) {
        if n > 0 {
            self.buckets[Self::index(ms)].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The q-quantile (0..=1), bucket resolution; 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return Self::value(i);
            }
        }
        Self::value(self.buckets.len() - 1)
    }
}

/// One viewer's settings.
#[derive(Debug, Clone)]
pub struct ViewerConfig {
    /// Where to start (a distributor or a front-end).
    pub url: Url,
    /// Where to go back to when the current server cannot be reached.
    pub frontend: Option<Url>,
    /// Bitrate when the server does not send `X-Bitrate`.
    pub bitrate_bps: u64,
    /// Prefetch burst when the server does not send `X-Prefetch-Bytes`.
    pub prefetch_bytes: u64,
    /// Buffered video needed to start or restart playback.
    pub start_buffer: Duration,
    /// First byte to ask for.
    pub start_offset: u64,
}

/// What one viewer saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ViewerReport {
    /// Startup delay (None if playback never started).
    pub startup_ms: Option<f64>,
    /// Stalls.
    pub stalls: u32,
    /// Time rebuffering.
    pub rebuffer_ms: f64,
    /// Session length.
    pub session_ms: f64,
    /// Integrity errors (continuity, sync, wrong Content-Range).
    pub integrity_errors: u64,
    /// Connections after the first one.
    pub reconnects: u32,
    /// Redirects followed.
    pub redirects: u32,
    /// Service gap of each reconnect: from seeing the old connection close to the first
    /// byte from the new one.
    pub gaps_ms: Vec<f64>,
    /// Silence across each reconnect: last byte before to first byte after (includes the
    /// idle part of a pacing tick).
    pub silences_ms: Vec<f64>,
    /// Buffered video when each reconnect started.
    pub buffered_at_disconnect_ms: Vec<f64>,
    /// Bytes received.
    pub bytes: u64,
    /// Next byte offset (where a resume would start).
    pub offset: u64,
    /// The whole video was received.
    pub completed: bool,
    /// Fatal HTTP status, if the server refused the viewer.
    pub http_error: Option<u16>,
    /// HLS: the longest time a segment took, from its first request to its last byte
    /// (retries included): the longest the player's input stood still while it wanted
    /// media. A relaying front-end hides a node death inside one slow segment.
    #[serde(default)]
    pub longest_wait_ms: f64,
}

/// Counters shared by all viewers of a load run.
#[derive(Debug)]
pub struct Shared {
    /// Pacing lateness samples.
    pub pacing: Histogram,
    /// Bytes received by all viewers.
    pub bytes: AtomicU64,
    /// Time origin for `last_resume`.
    pub base: Instant,
    last_resume_us: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            pacing: Histogram::default(),
            bytes: AtomicU64::new(0),
            base: Instant::now(),
            last_resume_us: AtomicU64::new(0),
        }
    }
}

impl Shared {
    /// When (since `base`) the latest first-byte-after-reconnect arrived.
    pub fn last_resume(&self) -> Duration {
        Duration::from_micros(self.last_resume_us.load(Ordering::Relaxed))
    }

    /// Records a first byte after a reconnect at `us` microseconds since `base`.
    pub(crate) fn note_resume(&self, us: u64) {
        self.last_resume_us.fetch_max(us, Ordering::Relaxed);
    }
}

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice());
}

enum ReadOutcome {
    Data,
    Again,
    Eof,
    Failed,
}

/// One viewer's live figures, read while it plays: a [`ViewerReport`] arrives only when the
/// viewer ends, but a test that injects faults must know, fault by fault, whether bytes
/// still flow and whether any was wrong. One per viewer (no shared cache line).
#[derive(Debug)]
pub struct Progress {
    base: Instant,
    /// Microseconds from `base` to the last byte received, plus one (0: none yet).
    last_byte_us: AtomicU64,
    bytes: AtomicU64,
    integrity_errors: AtomicU64,
    /// Requests sent (every connection attempt, redirects included).
    requests: AtomicU64,
    /// The URL of the last request (what a stalled viewer is waiting on).
    url: std::sync::Mutex<String>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            last_byte_us: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            integrity_errors: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            url: Default::default(),
        }
    }
}

impl Progress {
    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Integrity errors so far (as [`ViewerReport::integrity_errors`] will count them).
    pub fn integrity_errors(&self) -> u64 {
        self.integrity_errors.load(Ordering::Relaxed)
    }

    /// Requests sent so far (a viewer waiting on one connection does not add any).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The URL last asked.
    pub fn url(&self) -> String {
        self.url.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// When the last byte arrived (`None` before the first).
    pub fn last_byte(&self) -> Option<Instant> {
        match self.last_byte_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(self.base + Duration::from_micros(us - 1)),
        }
    }
}

struct Session<'a> {
    shared: &'a Shared,
    progress: Option<&'a Progress>,
    t0: Instant,
    play: Playback,
    checker: TsChecker,
    report: ViewerReport,
    last_data: Option<Instant>,
    on_time: u64,
    /// When the previous connection was seen closing, while reconnecting.
    reconnecting: Option<Instant>,
}

impl Session<'_> {
    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Processes bytes of the current connection (`conn` = start instant, bytes so far,
    /// prefetch, rate in bytes/s).
    fn on_bytes(&mut self, data: &[u8], conn: &mut (Instant, u64, u64, f64)) {
        if data.is_empty() {
            return;
        }
        let now_i = Instant::now();
        if let Some(closed) = self.reconnecting {
            self.report
                .gaps_ms
                .push(now_i.duration_since(closed).as_secs_f64() * 1000.0);
            if let Some(last) = self.last_data {
                self.report
                    .silences_ms
                    .push(now_i.duration_since(last).as_secs_f64() * 1000.0);
            }
            let us = now_i.duration_since(self.shared.base).as_micros() as u64;
            self.shared.last_resume_us.fetch_max(us, Ordering::Relaxed);
            self.reconnecting = None;
        }
        self.last_data = Some(now_i);
        self.checker.feed(data);
        let n = data.len() as u64;
        self.play.on_data(now_i.duration_since(self.t0), n);
        self.report.bytes += n;
        self.report.offset += n;
        if let Some(p) = self.progress {
            let us = now_i.duration_since(p.base).as_micros() as u64 + 1;
            p.last_byte_us.store(us, Ordering::Relaxed);
            p.bytes.store(self.report.bytes, Ordering::Relaxed);
            p.integrity_errors.store(
                self.report.integrity_errors + self.checker.errors(),
                Ordering::Relaxed,
            );
        }
        conn.1 += n;
        let due = conn.1.saturating_sub(conn.2) as f64 / conn.3;
        let late_ms = (now_i.duration_since(conn.0).as_secs_f64() - due) * 1000.0;
        // On-time samples are counted locally and added at the end: a shared bucket
        // written by every read of 10k viewers would be the load generator's hot spot.
        if late_ms < 1.0 {
            self.on_time += 1;
        } else {
            self.shared.pacing.record(late_ms);
        }
    }
}

async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}

/// Runs one viewer until it has the whole video, the server refuses it, or `stop` is set.
pub async fn run_viewer(
    cfg: &ViewerConfig,
    shared: &Shared,
    stop: watch::Receiver<bool>,
) -> ViewerReport {
    viewer_loop(cfg, shared, None, stop).await
}

/// [`run_viewer`] that keeps `progress` up to date while it plays.
pub async fn run_viewer_watched(
    cfg: &ViewerConfig,
    shared: &Shared,
    progress: &Progress,
    stop: watch::Receiver<bool>,
) -> ViewerReport {
    viewer_loop(cfg, shared, Some(progress), stop).await
}

async fn viewer_loop(
    cfg: &ViewerConfig,
    shared: &Shared,
    progress: Option<&Progress>,
    mut stop: watch::Receiver<bool>,
) -> ViewerReport {
    let mut s = Session {
        shared,
        progress,
        t0: Instant::now(),
        play: Playback::new(cfg.bitrate_bps, cfg.start_buffer),
        checker: TsChecker::new(cfg.start_offset),
        report: ViewerReport {
            offset: cfg.start_offset,
            ..Default::default()
        },
        last_data: None,
        on_time: 0,
        reconnecting: None,
    };
    let mut url = cfg.url.clone();
    let mut total: Option<u64> = None;
    let mut failures = 0u32;
    let mut redirects_in_row = 0u32;
    let mut connections = 0u32;
    'outer: loop {
        if *stop.borrow() || total.is_some_and(|t| s.report.offset >= t) {
            break;
        }
        let backoff = Duration::from_millis((10u64 << failures.min(6)).min(500));
        if let Some(p) = progress {
            p.requests.fetch_add(1, Ordering::Relaxed);
            *p.url.lock().unwrap_or_else(|p| p.into_inner()) = url.to_string();
        }
        let resp = tokio::select! {
            r = http::get(&url, Some(s.report.offset), Duration::from_secs(3)) => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let resp = match resp {
            Ok(r) => r,
            Err(_) => {
                failures += 1;
                if let Some(fe) = &cfg.frontend {
                    url = fe.clone();
                }
                if sleep_or_stop(backoff, &mut stop).await {
                    break;
                }
                continue;
            }
        };
        match resp.status {
            300..=399 => {
                redirects_in_row += 1;
                s.report.redirects += 1;
                match resp.header("location").map(|l| url.join(l)) {
                    Some(Ok(u)) if redirects_in_row <= 8 => url = u,
                    _ => {
                        failures += 1;
                        url = cfg.frontend.clone().unwrap_or_else(|| cfg.url.clone());
                        if sleep_or_stop(backoff, &mut stop).await {
                            break;
                        }
                    }
                }
                continue;
            }
            200 | 206 => {}
            500..=599 => {
                failures += 1;
                if sleep_or_stop(backoff, &mut stop).await {
                    break;
                }
                continue;
            }
            other => {
                s.report.http_error = Some(other);
                break;
            }
        }
        redirects_in_row = 0;
        failures = 0;
        let start = if resp.status == 206 {
            resp.content_range().map(|(a, _)| a)
        } else {
            Some(0)
        };
        if start != Some(s.report.offset) {
            // The server would hand us bytes we did not ask for: an integrity failure.
            s.report.integrity_errors += 1;
            if let Some(p) = progress {
                p.integrity_errors.fetch_add(1, Ordering::Relaxed);
            }
            break;
        }
        let size = resp
            .content_range()
            .map(|(_, t)| t)
            .or_else(|| resp.header_u64("content-length"));
        if let Some(t) = size {
            total = Some(t);
            s.play.set_total(t);
        }
        let rate_bps = resp.header_u64("x-bitrate").unwrap_or(cfg.bitrate_bps);
        if connections == 0 {
            s.play.set_rate(rate_bps, cfg.start_buffer);
        } else {
            s.report.reconnects += 1;
        }
        connections += 1;
        let prefetch = resp
            .header_u64("x-prefetch-bytes")
            .unwrap_or(cfg.prefetch_bytes);
        let mut conn = (Instant::now(), 0u64, prefetch, rate_bps.max(1) as f64 / 8.0);
        let leftover = resp.leftover;
        let stream = resp.stream;
        s.on_bytes(&leftover, &mut conn);
        // Pinned once per connection: polling it again costs no new registration.
        let stopped = stop.wait_for(|s| *s);
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                biased;
                r = stream.readable() => if r.is_err() { break },
                _ = &mut stopped => break 'outer,
            }
            let mut outcome = ReadOutcome::Again;
            // A read shorter than the buffer drained the socket: report it as WouldBlock so
            // tokio clears the readiness now (it keeps any event that came after the read),
            // which saves the extra read that would only return EAGAIN.
            let _ = stream.try_io(tokio::io::Interest::READABLE, || {
                SCRATCH.with_borrow_mut(|buf| match stream.try_read(buf) {
                    Ok(0) => {
                        outcome = ReadOutcome::Eof;
                        Ok(())
                    }
                    Ok(n) => {
                        s.on_bytes(&buf[..n], &mut conn);
                        outcome = ReadOutcome::Data;
                        if n < buf.len() {
                            Err(std::io::ErrorKind::WouldBlock.into())
                        } else {
                            Ok(())
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(e),
                    Err(e) => {
                        outcome = ReadOutcome::Failed;
                        Err(e)
                    }
                })
            });
            match outcome {
                ReadOutcome::Data | ReadOutcome::Again => {}
                ReadOutcome::Eof | ReadOutcome::Failed => break,
            }
        }
        if total.is_some_and(|t| s.report.offset >= t) {
            s.report.completed = true;
            break;
        }
        // Closed early: resume from the last byte, at the same URL (an old distributor
        // redirects) or, if that fails, at the front-end.
        let now = s.now();
        s.report
            .buffered_at_disconnect_ms
            .push(s.play.buffered_ms(now));
        s.reconnecting = Some(Instant::now());
    }
    let now = s.now();
    s.play.finish(now);
    s.report.startup_ms = s.play.startup.map(|d| d.as_secs_f64() * 1000.0);
    s.report.stalls = s.play.stalls;
    s.report.rebuffer_ms = s.play.rebuffer.as_secs_f64() * 1000.0;
    s.report.session_ms = now.as_secs_f64() * 1000.0;
    s.report.integrity_errors += s.checker.errors();
    shared.pacing.record_n(0.0, s.on_time);
    shared.bytes.fetch_add(s.report.bytes, Ordering::Relaxed);
    s.report
}

/// A load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Settings shared by every viewer.
    pub viewer: ViewerConfig,
    /// Number of viewers.
    pub clients: usize,
    /// Viewers join evenly over this time.
    pub ramp: Duration,
    /// Each run stops this long after the start.
    pub duration: Duration,
}

/// QoE summary of a load run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QoeSummary {
    /// Viewers.
    pub clients: usize,
    /// Viewers that started playing.
    pub started: usize,
    /// Startup delay p50.
    pub startup_p50_ms: f64,
    /// Startup delay p99.
    pub startup_p99_ms: f64,
    /// Stalls, all viewers.
    pub stalls: u64,
    /// Viewers with at least one stall.
    pub viewers_with_stalls: usize,
    /// Rebuffer time / session time.
    pub rebuffer_ratio: f64,
    /// Viewers with any integrity error.
    pub corrupt: usize,
    /// Viewers refused with an HTTP error.
    pub refused: usize,
    /// Reconnects, all viewers.
    pub reconnects: u64,
    /// Reconnect gap p50.
    pub gap_p50_ms: f64,
    /// Reconnect gap p99.
    pub gap_p99_ms: f64,
    /// Reconnect gap max.
    pub gap_max_ms: f64,
    /// Silence across reconnects p50 (last byte before to first byte after).
    pub silence_p50_ms: f64,
    /// Silence across reconnects p99.
    pub silence_p99_ms: f64,
    /// Pacing lateness p50 over all reads.
    pub pacing_error_p50_ms: f64,
    /// Pacing lateness p99 over all reads.
    pub pacing_error_p99_ms: f64,
    /// Bytes received, all viewers.
    pub bytes: u64,
    /// Mean receive rate per viewer over its session, bits/s.
    pub mean_rate_bps: f64,
}

/// The `q` quantile of `v` (nearest rank, [`smart_proto::stats`]); 0 when empty.
pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    smart_proto::stats::percentile(v, q).unwrap_or(0.0)
}

/// Summarises viewer reports.
pub fn summarize(reports: &[ViewerReport], shared: &Shared) -> QoeSummary {
    let mut startup: Vec<f64> = reports.iter().filter_map(|r| r.startup_ms).collect();
    let mut gaps: Vec<f64> = reports.iter().flat_map(|r| r.gaps_ms.clone()).collect();
    let mut silences: Vec<f64> = reports.iter().flat_map(|r| r.silences_ms.clone()).collect();
    let session: f64 = reports.iter().map(|r| r.session_ms).sum();
    let rebuffer: f64 = reports.iter().map(|r| r.rebuffer_ms).sum();
    QoeSummary {
        clients: reports.len(),
        started: startup.len(),
        startup_p50_ms: percentile(&mut startup, 0.5),
        startup_p99_ms: percentile(&mut startup, 0.99),
        stalls: reports.iter().map(|r| r.stalls as u64).sum(),
        viewers_with_stalls: reports.iter().filter(|r| r.stalls > 0).count(),
        rebuffer_ratio: if session > 0.0 {
            rebuffer / session
        } else {
            0.0
        },
        corrupt: reports.iter().filter(|r| r.integrity_errors > 0).count(),
        refused: reports.iter().filter(|r| r.http_error.is_some()).count(),
        reconnects: reports.iter().map(|r| r.reconnects as u64).sum(),
        gap_p50_ms: percentile(&mut gaps, 0.5),
        gap_p99_ms: percentile(&mut gaps, 0.99),
        gap_max_ms: gaps.iter().copied().fold(0.0, f64::max),
        silence_p50_ms: percentile(&mut silences, 0.5),
        silence_p99_ms: percentile(&mut silences, 0.99),
        pacing_error_p50_ms: shared.pacing.quantile(0.5),
        pacing_error_p99_ms: shared.pacing.quantile(0.99),
        bytes: reports.iter().map(|r| r.bytes).sum(),
        mean_rate_bps: if reports.is_empty() {
            0.0
        } else {
            reports
                .iter()
                .map(|r| r.bytes as f64 * 8000.0 / r.session_ms.max(1.0))
                .sum::<f64>()
                / reports.len() as f64
        },
    }
}

/// Runs `clients` viewers, joined over `ramp`, each stopped after `duration` from the start
/// of the run (or when its video ends). `stop` can end the run early.
pub async fn run_load(cfg: &LoadConfig, shared: Arc<Shared>) -> Vec<ViewerReport> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let vcfg = Arc::new(cfg.viewer.clone());
    let mut tasks = Vec::with_capacity(cfg.clients);
    let start = tokio::time::Instant::now();
    for i in 0..cfg.clients {
        let delay = cfg.ramp.mul_f64(i as f64 / cfg.clients.max(1) as f64);
        let (v, sh, rx) = (vcfg.clone(), shared.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + delay).await;
            run_viewer(&v, &sh, rx).await
        }));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    #[test]
    fn playback_starts_after_threshold_and_counts_stall() {
        // 8000 bps = 1000 B/s; threshold 1 s = 1000 B.
        let mut p = Playback::new(8000, ms(1000));
        p.on_data(ms(100), 500);
        assert_eq!(p.startup, None);
        p.on_data(ms(300), 500);
        assert_eq!(p.startup, Some(ms(300)));
        // Buffer of 1000 B runs dry at 1300 ms; data comes back at 2000 ms.
        p.on_data(ms(2000), 600);
        assert_eq!(p.stalls, 1);
        assert_eq!(p.buffered_ms(ms(2000)), 600.0);
        // Restart needs the threshold again: 400 more at 2500 ms.
        p.on_data(ms(2500), 400);
        assert_eq!(p.rebuffer, ms(1200));
        assert_eq!(p.stalls, 1);
        p.finish(ms(3000));
        assert_eq!(p.stalls, 1);
        assert!((p.buffered_ms(ms(3000)) - 500.0).abs() < 1.0);
    }

    #[test]
    fn playback_end_of_video_is_not_a_stall() {
        let mut p = Playback::new(8000, ms(1000));
        p.set_total(1500);
        p.on_data(ms(0), 1500);
        p.finish(ms(5000));
        assert_eq!((p.stalls, p.rebuffer), (0, Duration::ZERO));
    }

    #[test]
    fn stall_in_progress_counts_at_finish() {
        let mut p = Playback::new(8000, ms(500));
        p.on_data(ms(0), 500);
        p.finish(ms(2000));
        assert_eq!(p.stalls, 1);
        assert_eq!(p.rebuffer, ms(1500));
    }

    #[test]
    fn histogram_quantiles() {
        let h = Histogram::default();
        for i in 0..100 {
            h.record(i as f64);
        }
        h.record(5_000.0);
        assert_eq!(h.quantile(0.5), 50.0);
        assert_eq!(h.quantile(1.0), 5_000.0);
        assert_eq!(h.count(), 101);
        let mut v = vec![3.0, 1.0, 2.0];
        assert_eq!(percentile(&mut v, 0.5), 2.0);
    }
}
