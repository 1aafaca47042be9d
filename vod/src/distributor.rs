//! The distributor (GloVE): one origin stream per video into a shared block cache, every
//! viewer served from those blocks, each paced at the video's bitrate after a prefetch burst.
//!
//! Per viewer the distributor keeps a socket, a byte position and the cache blocks it is
//! sending: no buffers (writes point into shared `Bytes` blocks), no task, no timer. The
//! accept path runs on the tokio runtime: it admits the connection under the connection cap,
//! reads the head (with a timeout, so a slowloris head is dropped), answers, and writes the
//! prefetch burst plus one send-ahead period itself (waiting for the origin if needed). Then
//! it hands the socket to one of the pacer threads ([`crate::pacer`]), which send every
//! viewer what falls due one period ahead (1 s by default, like nginx's `limit_rate`) in one
//! vectored write per period, on one coalesced timer per thread. So accepting never queues
//! behind pacing, and pacing costs one syscall per viewer per period.
//!
//! Every body write has a write timeout: a viewer whose socket accepts nothing for that long
//! has stopped reading and is dropped (counted in `write_timeouts`). Connections over the cap
//! get `503` with `Retry-After` (counted in `over_capacity`).
//!
//! Modes: `Serving`; `Draining` (existing viewers continue, new requests get 503);
//! `HandedOff(url)` (every viewer connection is closed at once; any request, including the
//! viewers' reconnects, gets `307` to the same path at `url`, so viewers resume there with
//! `Range` at their exact byte).
//!
//! ## Layout
//! - [`DistributorConfig`], [`Distributor`]; [`Mode`] and [`Stats`] live in [`crate::video`].
//! - [`Distributor::serve`]: accept loop; `handle` parses, answers errors, runs
//!   `first_period` and hands the viewer to the pacers.
//! - `fetch_loop`: the origin fetcher of one video, driven by [`crate::cache::BlockCache`].
//! - [`Distributor::checkpoint`] / [`Distributor::restore`] / [`Distributor::handoff`]:
//!   what the control API ([`crate::workload`]) calls.
//! - HLS requests (`.m3u8`, `/seg/`) go to [`crate::hls_server`] from `handle`, through
//!   [`HlsHost`]; it reads the same caches ([`crate::video`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OnceCell, watch};

use crate::hls_server::{HlsCheckpoint, HlsConfig, HlsHost, HlsState, HlsStats};

use crate::cache::BlockCache;
use crate::http::{self, ConnLimit, ResponseHead, Url};
use crate::pacer::{Pace, PacedViewer, PacerConfig, PacerPool, Registration};

/// Distributor settings.
#[derive(Debug, Clone)]
pub struct DistributorConfig {
    /// Origin base URL (video paths are appended).
    pub origin: Url,
    /// Cache window as a fraction of the video's duration (GloVE default 0.2).
    pub window_fraction: f64,
    /// Fixed cache window in bytes; overrides the fraction.
    pub window_bytes: Option<u64>,
    /// Cache block size in bytes.
    pub block_size: u64,
    /// Prefetch burst sent at once to a new connection, in milliseconds of video.
    pub prefetch_ms: u64,
    /// Pacing period and send-ahead: a viewer is written once per period, with what falls
    /// due up to one period ahead.
    pub tick: Duration,
    /// Read-ahead beyond the fastest viewer, bytes (None: the whole window ahead of the
    /// slowest viewer, which pre-fills the cache).
    pub readahead: Option<u64>,
    /// HLS sessions and segments.
    pub hls: HlsConfig,
    /// Most concurrent connections; more get 503.
    pub max_connections: usize,
    /// A client must send its request head within this time (else 408 and closed).
    pub head_timeout: Duration,
    /// A viewer whose socket accepts nothing for this long is dropped.
    pub write_timeout: Duration,
    /// Pacer threads (0: one per core).
    pub pacers: usize,
    /// Paced writes with `MSG_MORE` (like nginx's `tcp_nopush`): only full segments leave
    /// at once, a partial one waits for more data or the kernel's probe timer (≤ 200 ms).
    pub cork: bool,
    /// The one video this distributor serves (its path, e.g. `/v1.ts`), when it was started
    /// for one: the admission that started it was for that video, so any other is `404`
    /// (a viewer cannot use it to fetch the origin's other videos outside admission).
    pub only_video: Option<String>,
}

impl DistributorConfig {
    /// Defaults: 20 % window, 64 KiB blocks, 2 s prefetch, 1 s send-ahead period, 256 KiB
    /// read-ahead, connection cap from the open-file limit, 10 s head and 30 s write
    /// timeouts, one pacer per core.
    pub fn new(origin: Url) -> Self {
        Self {
            origin,
            window_fraction: 0.2,
            window_bytes: None,
            block_size: 64 * 1024,
            prefetch_ms: 2000,
            tick: Duration::from_secs(1),
            readahead: Some(256 * 1024),
            hls: Default::default(),
            max_connections: http::default_max_connections(),
            head_timeout: http::DEFAULT_HEAD_TIMEOUT,
            write_timeout: Duration::from_secs(30),
            pacers: 0,
            cork: false,
            only_video: None,
        }
    }
}

/// How long restored viewer positions stay pinned in the cache (see [`Distributor::restore`]).
pub const PIN_TTL: Duration = Duration::from_secs(10);
/// How far behind the source's position a restored viewer is pinned: more than the bytes a
/// viewer's path can hold in flight (the source's send buffer, a relay's buffers).
pub const PIN_BEHIND_BYTES: u64 = 1024 * 1024;

pub use crate::video::{Mode, Stats, VideoError, VideoMeta};
use crate::video::{VideoEntry, handed_off, lock, wait_block};

/// The distributor.
#[derive(Debug)]
pub struct Distributor {
    cfg: DistributorConfig,
    videos: Mutex<HashMap<String, Arc<OnceCell<Arc<VideoEntry>>>>>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// The connection cap (its `refused` counter is `over_capacity` in `usage`).
    pub limit: Arc<ConnLimit>,
    mode: watch::Sender<Mode>,
    pub(crate) hls: HlsState,
    /// Bumped by every handoff and stop: pacers close viewers admitted under an older value.
    close_gen: Arc<AtomicU64>,
    pacers: PacerPool,
}

/// A consistent-enough copy of the cache for a checkpoint: metadata, block references and
/// viewer positions. Blocks are reference-counted, so taking it costs no copy.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Videos.
    pub videos: Vec<VideoMeta>,
    /// `(video index, block index, block size used, data)`.
    pub blocks: Vec<(usize, u64, u64, Bytes)>,
    /// `(video index, byte offset of the block, viewers)`: positions at block granularity.
    pub viewers: Vec<(usize, u64, u32)>,
    /// HLS segment indexes and sessions.
    pub hls: HlsCheckpoint,
}

impl Distributor {
    /// A new distributor in `Serving` mode, with its pacer threads running.
    ///
    /// # Panics
    /// When the pacer threads cannot be started (see [`Distributor::try_new`]).
    pub fn new(cfg: DistributorConfig) -> Arc<Self> {
        Self::try_new(cfg).expect("starting the distributor's pacer threads")
    }

    /// A new distributor, or the error that kept its pacer threads from starting.
    pub fn try_new(cfg: DistributorConfig) -> std::io::Result<Arc<Self>> {
        let stats = Arc::new(Stats::default());
        let close_gen = Arc::new(AtomicU64::new(0));
        let threads = match cfg.pacers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let pacer_cfg = PacerConfig {
            period: cfg.tick.max(Duration::from_millis(1)),
            write_timeout: cfg.write_timeout,
            cork: cfg.cork,
        };
        let pacers = PacerPool::start(threads, pacer_cfg, stats.clone(), close_gen.clone())?;
        Ok(Arc::new(Self {
            hls: HlsState::new(cfg.hls.clone()),
            limit: ConnLimit::new(cfg.max_connections),
            cfg,
            videos: Mutex::new(HashMap::new()),
            stats,
            mode: watch::channel(Mode::Serving).0,
            close_gen,
            pacers,
        }))
    }

    /// Closes every viewer now (pacers and first periods alike).
    fn close_viewers(&self) {
        self.close_gen.fetch_add(1, Ordering::AcqRel);
        self.pacers.wake_all();
    }

    /// The origin's base URL.
    pub(crate) fn origin_url(&self) -> &Url {
        &self.cfg.origin
    }

    /// A receiver of mode changes (what `wait_block` watches for a handoff).
    pub(crate) fn mode_watch(&self) -> watch::Receiver<Mode> {
        self.mode.subscribe()
    }

    /// Current mode.
    pub fn mode(&self) -> Mode {
        self.mode.borrow().clone()
    }

    /// Stops taking new viewers (503); existing ones continue.
    pub fn drain(&self) {
        self.mode.send_if_modified(|m| {
            if *m == Mode::Serving {
                *m = Mode::Draining;
                true
            } else {
                false
            }
        });
    }

    /// Back to normal service (undoes drain or handoff).
    pub fn resume(&self) {
        self.mode.send_replace(Mode::Serving);
    }

    /// Sends every viewer to `to` (a base URL): closes their connections now and redirects
    /// every later request there. Returns the viewers that were connected, once all of them
    /// are closed (or after `wait`).
    pub async fn handoff(&self, to: Url, wait: Duration) -> u64 {
        let before = self.stats.viewers_active.load(Ordering::Relaxed);
        self.mode.send_replace(Mode::HandedOff(to));
        self.hls.release_all();
        self.close_viewers();
        let deadline = Instant::now() + wait;
        while self.stats.viewers_active.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        before
    }

    /// Closes every viewer, refuses requests and stops the origin fetchers.
    pub fn stop(&self) {
        self.mode.send_replace(Mode::Stopped);
        self.hls.release_all();
        self.close_viewers();
        for e in self.entries() {
            e.fetch_wake.notify_one();
        }
    }

    /// Bytes held by all caches.
    pub fn cache_bytes(&self) -> u64 {
        self.entries().iter().map(|e| lock(&e.cache).bytes()).sum()
    }

    /// `(hits, misses, evictions, peak bytes)` summed over videos.
    pub fn cache_counters(&self) -> (u64, u64, u64, u64) {
        self.entries().iter().fold((0, 0, 0, 0), |a, e| {
            let c = lock(&e.cache);
            (
                a.0 + c.hits,
                a.1 + c.misses,
                a.2 + c.evictions,
                a.3 + c.peak_bytes,
            )
        })
    }

    fn entries(&self) -> Vec<Arc<VideoEntry>> {
        lock(&self.videos)
            .values()
            .filter_map(|c| c.get().cloned())
            .collect()
    }

    /// Takes a checkpoint of the caches and viewer positions.
    pub fn checkpoint(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for (i, e) in self.entries().into_iter().enumerate() {
            let c = lock(&e.cache);
            s.videos.push(e.meta.clone());
            let bs = c.block_size();
            s.blocks
                .extend(c.snapshot().into_iter().map(|(b, d)| (i, b, bs, d)));
            s.viewers
                .extend(c.viewer_blocks().map(|(b, n)| (i, b * bs, n)));
        }
        s.hls = self.hls.checkpoint(&s.videos);
        s
    }

    /// Loads a checkpoint: creates the videos (no origin contact) and stores their blocks.
    /// Blocks cut with another block size are stored only if they align with ours.
    ///
    /// The source's viewer positions are pinned for [`PIN_TTL`]: until the handed-off viewers
    /// arrive, the blocks they will ask for count as watched and are not evicted.
    pub fn restore(self: &Arc<Self>, snap: Snapshot) -> u64 {
        let mut stored = 0;
        let entries: Vec<Arc<VideoEntry>> = snap
            .videos
            .iter()
            .map(|m| self.install(m.clone()))
            .collect();
        let mut pins = Vec::new();
        for &(vi, off, n) in &snap.viewers {
            let Some(e) = entries.get(vi) else { continue };
            let mut c = lock(&e.cache);
            let b = off / c.block_size();
            for _ in 0..n.min(1_000_000) {
                c.add_viewer(b);
            }
            pins.push((e.clone(), b, n.min(1_000_000)));
        }
        for (vi, b, bs, data) in snap.blocks {
            let Some(e) = entries.get(vi) else { continue };
            let mut c = lock(&e.cache);
            let (off, ours) = (b * bs, c.block_size());
            if off % ours == 0 && data.len() as u64 == c.block_len(off / ours) {
                stored += data.len() as u64;
                lock(&e.restored).insert(off / ours);
                c.insert(off / ours, data);
            }
        }
        // A handed-off viewer comes back from the byte it *received*, which lags the
        // source's position by what was in flight (socket buffers, a relay's). The pins move
        // back over the restored blocks just behind them (up to PIN_BEHIND_BYTES), so that
        // those are not behind the slowest viewer, which eviction takes first, and are not
        // fetched from the origin again; never over a hole, which the fetcher would fill.
        let pins: Vec<(Arc<VideoEntry>, u64, u32)> = pins
            .into_iter()
            .map(|(e, b, n)| {
                let mut c = lock(&e.cache);
                let floor = b.saturating_sub(PIN_BEHIND_BYTES.div_ceil(c.block_size()));
                let mut p = b;
                while p > floor && c.contains(p - 1) {
                    p -= 1;
                }
                if p != b {
                    for _ in 0..n {
                        c.move_viewer(b, p);
                    }
                }
                drop(c);
                (e, p, n)
            })
            .collect();
        if !pins.is_empty() {
            tokio::spawn(async move {
                tokio::time::sleep(PIN_TTL).await;
                for (e, b, n) in pins {
                    let mut c = lock(&e.cache);
                    for _ in 0..n {
                        c.remove_viewer(b);
                    }
                    drop(c);
                    e.fetch_wake.notify_one();
                }
            });
        }
        self.hls.restore(snap.hls, &entries);
        for e in &entries {
            e.data_ready.notify_waiters();
        }
        self.stats
            .restored_bytes
            .fetch_add(stored, Ordering::Relaxed);
        stored
    }

    fn window_for(&self, meta: &VideoMeta) -> u64 {
        self.cfg
            .window_bytes
            .unwrap_or_else(|| (meta.size as f64 * self.cfg.window_fraction.clamp(0.0, 1.0)) as u64)
    }

    fn install(self: &Arc<Self>, meta: VideoMeta) -> Arc<VideoEntry> {
        let cell = lock(&self.videos)
            .entry(meta.path.clone())
            .or_default()
            .clone();
        if let Some(e) = cell.get() {
            return e.clone();
        }
        let entry = self.new_entry(meta);
        match cell.set(entry.clone()) {
            Ok(()) => entry,
            Err(_) => cell.get().cloned().unwrap_or(entry),
        }
    }

    fn new_entry(self: &Arc<Self>, meta: VideoMeta) -> Arc<VideoEntry> {
        let mut cache = BlockCache::new(self.cfg.block_size, meta.size, self.window_for(&meta));
        if let Some(r) = self.cfg.readahead {
            cache = cache.with_readahead(r);
        }
        let entry = Arc::new(VideoEntry {
            meta,
            block_size: cache.block_size(),
            cache: Mutex::new(cache),
            data_ready: Notify::new(),
            fetch_wake: Notify::new(),
            restored: Mutex::new(Default::default()),
        });
        tokio::spawn(fetch_loop(self.clone(), entry.clone()));
        entry
    }

    pub(crate) async fn video(self: &Arc<Self>, path: &str) -> Result<Arc<VideoEntry>, VideoError> {
        let cell = lock(&self.videos)
            .entry(path.to_string())
            .or_default()
            .clone();
        let r = cell
            .get_or_try_init(|| async {
                let url = self.cfg.origin.with_path(path);
                let resp = http::head(&url, Duration::from_secs(5))
                    .await
                    .map_err(|e| VideoError::Origin(e.to_string()))?;
                match resp.status {
                    404 => return Err(VideoError::NotFound),
                    200 | 206 => {}
                    s => return Err(VideoError::Origin(format!("status {s}"))),
                }
                let size = resp
                    .content_range()
                    .map(|(_, t)| t)
                    .or_else(|| resp.header_u64("content-length"))
                    .ok_or_else(|| VideoError::Origin("no size".into()))?;
                let bitrate_bps = resp
                    .header_u64("x-bitrate")
                    .filter(|b| *b > 0)
                    .ok_or_else(|| VideoError::Origin("no X-Bitrate".into()))?;
                let duration_ms = resp
                    .header_u64("x-duration-ms")
                    .unwrap_or((size as u128 * 8000 / bitrate_bps as u128) as u64);
                let meta = VideoMeta {
                    path: path.to_string(),
                    size,
                    bitrate_bps,
                    duration_ms,
                };
                Ok(self.new_entry(meta))
            })
            .await
            .cloned();
        if r.is_err() {
            // Forget failures so that a later request retries the origin.
            let mut v = lock(&self.videos);
            if v.get(path).is_some_and(|c| c.get().is_none()) {
                v.remove(path);
            }
        }
        r
    }

    /// Runs the accept loop.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => match self.limit.try_acquire() {
                    Some(conn) => {
                        let me = self.clone();
                        tokio::spawn(async move { me.handle(stream, conn).await });
                    }
                    None => self.limit.refuse(stream),
                },
                Err(e) => {
                    tracing::warn!(cause = %e, "distributor accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    async fn handle(self: Arc<Self>, mut stream: TcpStream, conn: http::ConnGuard) {
        // Read before the mode: a handoff after this point closes the viewer (see pacer).
        let generation = self.close_gen.load(Ordering::Acquire);
        let _ = stream.set_nodelay(true);
        let req = match http::read_request(&mut stream, self.cfg.head_timeout).await {
            Ok(r) => r,
            Err(e) => {
                if e == http::HttpError::Timeout {
                    self.stats.head_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(s) = e.status() {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    http::write_error(&mut stream, s, &[]).await;
                }
                return;
            }
        };
        let route = crate::hls::route(&req.path);
        if let Some(only) = &self.cfg.only_video {
            let asked = match &route {
                Some(Ok(crate::hls::Route::Playlist { video }))
                | Some(Ok(crate::hls::Route::Segment { video, .. })) => video.as_str(),
                _ => req.path.as_str(),
            };
            if asked != only {
                self.stats.other_video.fetch_add(1, Ordering::Relaxed);
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                http::write_error(&mut stream, 404, &[]).await;
                return;
            }
        }
        if let Some(route) = route {
            return crate::hls_server::serve(&self, stream, req, route).await;
        }
        match self.mode() {
            Mode::Serving => {}
            Mode::Draining | Mode::Stopped => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                http::write_error(&mut stream, 503, &[("Retry-After", "1".into())]).await;
                return;
            }
            Mode::HandedOff(to) => {
                self.stats.redirects.fetch_add(1, Ordering::Relaxed);
                http::write_error(
                    &mut stream,
                    307,
                    &[("Location", to.with_path(&req.path).to_string())],
                )
                .await;
                return;
            }
        }
        let entry = match self.video(&req.path).await {
            Ok(e) => e,
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                let status = if matches!(e, VideoError::NotFound) {
                    404
                } else {
                    502
                };
                http::write_error(&mut stream, status, &[]).await;
                return;
            }
        };
        let size = entry.meta.size;
        let (status, start, end) = match req.range.as_deref() {
            None => (200, 0, size),
            Some(r) => match http::parse_range(r)
                .ok()
                .and_then(|s| http::resolve_range(s, size))
            {
                Some((a, b)) => (206, a, b),
                None => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    http::write_error(
                        &mut stream,
                        416,
                        &[("Content-Range", format!("bytes */{size}"))],
                    )
                    .await;
                    return;
                }
            },
        };
        let rate = entry.meta.bitrate_bps as f64 / 8.0;
        let prefetch = (rate * self.cfg.prefetch_ms as f64 / 1000.0) as u64;
        let mut head = ResponseHead::new(status)
            .header("Content-Type", "video/mp2t")
            .header("Accept-Ranges", "bytes")
            .header("Content-Length", end - start)
            .header("X-Bitrate", entry.meta.bitrate_bps)
            .header("X-Duration-Ms", entry.meta.duration_ms)
            .header("X-Prefetch-Bytes", prefetch);
        if status == 206 {
            head = head.header("Content-Range", format!("bytes {start}-{}/{size}", end - 1));
        }
        let wt = self.cfg.write_timeout;
        if http::write_all_timeout(&mut stream, &head.finish(), wt)
            .await
            .is_err()
            || req.head_only
        {
            return;
        }
        let pace = Pace {
            start,
            end,
            prefetch,
            rate,
            ahead: crate::pacer::send_ahead(self.cfg.tick),
        };
        // The send-ahead must fit in the socket buffer so that one write per period is whole.
        let sndbuf = prefetch.max(pace.target(Duration::ZERO) - start)
            + (rate * pace.ahead.as_secs_f64()) as u64;
        let _ = socket2::SockRef::from(&stream)
            .set_send_buffer_size(sndbuf.clamp(64 << 10, 16 << 20) as usize);
        let t0 = Instant::now();
        let mut reg = Registration::new(
            entry.clone(),
            self.stats.clone(),
            start / entry.block_size,
            conn,
        );
        let mut mode = self.mode.subscribe();
        let pos = match self
            .first_period(&entry, &mut stream, &pace, &mut reg, &mut mode)
            .await
        {
            Ok(Some(pos)) => pos,
            Ok(None) => return,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    self.stats.write_timeouts.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(cause = %e, "viewer connection ended");
                return;
            }
        };
        if pos >= end {
            return;
        }
        let sock = match stream.into_std() {
            Ok(s) => socket2::Socket::from(s),
            Err(_) => return,
        };
        self.pacers.add(PacedViewer {
            sock,
            reg,
            pace,
            t0,
            pos,
            generation,
            held: Vec::new(),
            stuck_since: None,
        });
    }

    /// Sends the prefetch burst and the first send-ahead period from the accept path,
    /// waiting for the origin when a block is missing. Returns the next byte, or None when
    /// a handoff or stop closed the viewer meanwhile.
    async fn first_period(
        &self,
        entry: &VideoEntry,
        stream: &mut TcpStream,
        pace: &Pace,
        reg: &mut Registration,
        mode: &mut watch::Receiver<Mode>,
    ) -> std::io::Result<Option<u64>> {
        let bs = entry.block_size;
        let target = pace.target(Duration::ZERO);
        let mut pos = pace.start;
        while pos < target {
            let b = pos / bs;
            reg.move_to(b);
            let Some(data) = wait_block(entry, b, mode).await else {
                return Ok(None);
            };
            let off = (pos - b * bs) as usize;
            let n = (data.len().saturating_sub(off) as u64).min(target - pos) as usize;
            if n == 0 {
                return Err(std::io::Error::other("short block"));
            }
            // Biased: the write usually completes at once and the handoff watch is then
            // never polled (no waker registration per write).
            tokio::select! {
                biased;
                r = http::write_counted(
                    stream,
                    &data[off..off + n],
                    self.cfg.write_timeout,
                    Some(&self.stats.bytes_sent),
                ) => r?,
                _ = handed_off(mode) => return Ok(None),
            }
            pos += n as u64;
        }
        Ok(Some(pos))
    }
}

/// What HLS needs of the distributor (the trait lives with HLS so that `hls_server` does
/// not import this module).
impl HlsHost for Distributor {
    fn mode(&self) -> Mode {
        Distributor::mode(self)
    }

    fn mode_watch(&self) -> watch::Receiver<Mode> {
        Distributor::mode_watch(self)
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn hls(&self) -> &HlsState {
        &self.hls
    }

    fn origin_url(&self) -> &Url {
        Distributor::origin_url(self)
    }

    fn video(
        self: &Arc<Self>,
        path: &str,
    ) -> impl std::future::Future<Output = Result<Arc<VideoEntry>, VideoError>> + Send {
        Distributor::video(self, path)
    }
}

impl Distributor {
    /// HLS sessions now (each counts as a client in `usage`).
    pub fn hls_sessions(&self) -> u64 {
        self.hls.clients()
    }

    /// HLS counters.
    pub fn hls_stats(&self) -> &HlsStats {
        &self.hls.stats
    }
}

/// An open origin stream positioned at a block boundary.
struct OriginConn {
    stream: TcpStream,
    next_block: u64,
    leftover: Vec<u8>,
}

async fn open_origin(
    d: &Distributor,
    e: &VideoEntry,
    b: u64,
    bs: u64,
) -> Result<OriginConn, String> {
    let url = d.cfg.origin.with_path(&e.meta.path);
    let from = b * bs;

    let resp = http::get(&url, Some(from), Duration::from_secs(5))
        .await
        .map_err(|x| x.to_string())?;
    d.stats.origin_streams.fetch_add(1, Ordering::Relaxed);
    match (resp.status, resp.content_range()) {
        (206, Some((s, total))) if s == from && total == e.meta.size => {}
        (200, _) if from == 0 => {}
        (s, cr) => return Err(format!("origin answered {s} {cr:?} for bytes={from}-")),
    }
    Ok(OriginConn {
        stream: resp.stream,
        next_block: b,
        leftover: resp.leftover,
    })
}

async fn read_block(conn: &mut OriginConn, len: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(len);
    let take = conn.leftover.len().min(len);
    buf.extend_from_slice(&conn.leftover[..take]);
    conn.leftover.drain(..take);
    while buf.len() < len {
        let want = len - buf.len();
        let n = (&mut conn.stream)
            .take(want as u64)
            .read_buf(&mut buf)
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    conn.next_block += 1;
    Ok(buf.freeze())
}

/// The single origin fetcher of one video.
async fn fetch_loop(d: Arc<Distributor>, e: Arc<VideoEntry>) {
    let mut conn: Option<OriginConn> = None;
    let mut failures = 0u32;
    loop {
        if d.mode() == Mode::Stopped {
            return;
        }
        let next = lock(&e.cache).next_fetch();
        let Some(b) = next else {
            e.fetch_wake.notified().await;
            continue;
        };
        let (bs, len) = {
            let c = lock(&e.cache);
            (c.block_size(), c.block_len(b) as usize)
        };
        if conn.as_ref().is_none_or(|c| c.next_block != b) {
            conn = match open_origin(&d, &e, b, bs).await {
                Ok(c) => Some(c),
                Err(err) => {
                    failures += 1;
                    tracing::warn!(video = %e.meta.path, block = b, cause = %err, "origin fetch failed");
                    tokio::time::sleep(Duration::from_millis((50 * failures as u64).min(1000)))
                        .await;
                    continue;
                }
            };
        }
        let Some(c) = conn.as_mut() else { continue };
        match read_block(c, len).await {
            Ok(data) => {
                failures = 0;
                d.stats
                    .bytes_received
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                if lock(&e.restored).contains(&b) {
                    d.stats
                        .refetched_bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                lock(&e.cache).insert(b, data);
                e.data_ready.notify_waiters();
            }
            Err(err) => {
                tracing::warn!(video = %e.meta.path, block = b, cause = %err, "origin stream broke");
                conn = None;
            }
        }
    }
}

/// Binds a TCP listener with a large accept backlog (bursts of thousands of viewers).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(8192)?;
    TcpListener::from_std(sock.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: u64 = 64 * 1024;

    /// A snapshot of one 64-block video holding `blocks`, with `n` viewers at block `at`.
    fn snapshot(blocks: std::ops::Range<u64>, at: u64, n: u32) -> Snapshot {
        Snapshot {
            videos: vec![VideoMeta {
                path: "/v.ts".into(),
                size: 64 * BS,
                bitrate_bps: 400_000,
                duration_ms: 64 * BS * 8 * 1000 / 400_000,
            }],
            blocks: blocks
                .map(|b| (0, b, BS, Bytes::from(vec![b as u8; BS as usize])))
                .collect(),
            viewers: vec![(0, at * BS, n)],
            hls: Default::default(),
        }
    }

    fn pinned(d: &Arc<Distributor>) -> Vec<(u64, u32)> {
        let e = d.entries().pop().expect("one video");
        lock(&e.cache).viewer_blocks().collect()
    }

    fn distributor() -> Arc<Distributor> {
        let mut cfg = DistributorConfig::new(Url::parse("http://127.0.0.1:9/").unwrap());
        cfg.window_bytes = Some(64 * BS);
        Distributor::new(cfg)
    }

    #[tokio::test]
    async fn restored_viewers_are_pinned_back_over_the_restored_blocks_behind_them() {
        // Everything behind the viewers was restored: the pin goes back the whole margin
        // (1 MiB: 16 blocks), where a viewer with bytes in flight resumes.
        let d = distributor();
        assert_eq!(d.restore(snapshot(0..40, 30, 3)), 40 * BS);
        assert_eq!(pinned(&d), vec![(30 - PIN_BEHIND_BYTES / BS, 3)]);
        assert_eq!(d.stats.restored_bytes.load(Ordering::Relaxed), 40 * BS);
        // The source had evicted what lay behind its slowest viewer: the pin stops at the
        // first restored block, never over a hole the fetcher would then fill.
        let d = distributor();
        d.restore(snapshot(27..40, 30, 2));
        assert_eq!(pinned(&d), vec![(27, 2)]);
    }
}
