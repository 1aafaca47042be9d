//! The origin: serves whole videos over HTTP/1.1 with `Range` (206), unpaced, with the video's
//! bitrate and duration as response headers (`X-Bitrate`, `X-Duration-Ms`), and each video's
//! HLS segment index at `GET /{video}.segments.json` ([`crate::hls`]).
//!
//! The catalogue is held in memory (`Bytes`), loaded from files or generated. A file is
//! scanned once ([`crate::scan`]): its bitrate is the operator's `--bitrate` or the PCR rate,
//! its duration the media time of its timestamps (first PTS to the end of the last frame),
//! and its segment index is cut from the same scan. Generated videos know both exactly and
//! are scanned for their index only when a distributor first asks.
//!
//! Connections are capped ([`OriginLimits::max_connections`]; over it a client gets 503), a
//! request head must arrive within the head timeout, and a body write that makes no progress
//! for the write timeout drops the connection. A distributor's fetcher legitimately stops
//! reading while its cache window is full, so the default write timeout is long (60 s); when
//! it fires the fetcher just reopens its stream where it needs it.
//!
//! ## Layout
//! - [`Video`]: one catalogue entry; [`Video::generated`], [`Video::from_file`],
//!   [`Video::segment_index`].
//! - [`OriginLimits`]: caps and timeouts.
//! - [`Origin`]: the catalogue and counters; [`Origin::serve`] runs the accept loop.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::hls::{self, SegmentIndex};
use crate::http::{self, ConnLimit, ResponseHead};
use crate::{scan, ts};

/// One video of the catalogue.
#[derive(Debug, Clone)]
pub struct Video {
    /// The MPEG-TS bytes.
    pub data: Bytes,
    /// Bitrate in bits per second.
    pub bitrate_bps: u64,
    /// Media duration when known from the video's timestamps or parameters.
    pub media_duration_ms: Option<u64>,
    /// HLS segment index, cut once (on load for files, on first request otherwise).
    index: Arc<OnceLock<SegmentIndex>>,
}

impl Video {
    /// A generated video.
    pub fn generated(params: ts::VideoParams) -> Result<Self, ts::TsError> {
        Ok(Self::from_bytes(
            Bytes::from(ts::generate(params)?),
            params.bitrate_bps,
        ))
    }

    /// Bytes with a known bitrate; duration and index come from a scan when needed.
    pub fn from_bytes(data: Bytes, bitrate_bps: u64) -> Self {
        Self {
            data,
            bitrate_bps,
            media_duration_ms: None,
            index: Arc::default(),
        }
    }

    /// A file; its bitrate is `bitrate_bps` or else its PCR rate, its duration its media
    /// time (see the module docs).
    pub fn from_file(path: &Path, bitrate_bps: Option<u64>) -> std::io::Result<Self> {
        let data = std::fs::read(path)?;
        let timing = scan::scan(&data);
        let bitrate_bps = bitrate_bps
            .or_else(|| timing.bitrate_bps())
            .or_else(|| ts::estimate_bitrate(&data))
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "{}: no PCR found; give its bitrate",
                    path.display()
                ))
            })?;
        let v = Self {
            media_duration_ms: timing.duration_ms(),
            ..Self::from_bytes(Bytes::from(data), bitrate_bps)
        };
        if let Some(ix) =
            SegmentIndex::from_timing(&timing, v.data.len() as u64, hls::DEFAULT_TARGET)
        {
            let _ = v.index.set(ix);
        }
        Ok(v)
    }

    /// Duration in milliseconds: the media duration when known, else implied by size and
    /// bitrate.
    pub fn duration_ms(&self) -> u64 {
        self.media_duration_ms.unwrap_or_else(|| {
            (self.data.len() as u128 * 8000 / self.bitrate_bps.max(1) as u128) as u64
        })
    }

    /// The HLS segment index: cut from the video's timestamps, or fixed-duration cuts when
    /// it has none the scanner understands.
    pub fn segment_index(&self) -> &SegmentIndex {
        self.index.get_or_init(|| {
            let size = self.data.len() as u64;
            SegmentIndex::from_timing(&scan::scan(&self.data), size, hls::DEFAULT_TARGET)
                .unwrap_or_else(|| {
                    SegmentIndex::fixed(
                        size,
                        self.bitrate_bps,
                        self.duration_ms(),
                        hls::DEFAULT_TARGET,
                    )
                })
        })
    }
}

/// Origin counters.
#[derive(Debug, Default)]
pub struct OriginStats {
    /// Video responses started (each is one origin stream).
    pub streams: AtomicU64,
    /// Body bytes sent.
    pub bytes_sent: AtomicU64,
    /// Connections dropped because the client accepted nothing for the write timeout.
    pub write_timeouts: AtomicU64,
    /// Connections dropped because the request head did not arrive in time.
    pub head_timeouts: AtomicU64,
}

/// Caps and timeouts of the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginLimits {
    /// Most concurrent connections; more get 503.
    pub max_connections: usize,
    /// A client must send its request head within this time.
    pub head_timeout: Duration,
    /// A connection whose socket accepts nothing for this long is dropped.
    pub write_timeout: Duration,
}

impl Default for OriginLimits {
    /// Cap from the open-file limit, 10 s head timeout, 60 s write timeout.
    fn default() -> Self {
        Self {
            max_connections: http::default_max_connections(),
            head_timeout: http::DEFAULT_HEAD_TIMEOUT,
            write_timeout: Duration::from_secs(60),
        }
    }
}

/// The origin server.
#[derive(Debug)]
pub struct Origin {
    videos: HashMap<String, Video>,
    /// Answer 404 for segment indexes, like a plain file server (tests the fallback).
    no_indexes: bool,
    limits: OriginLimits,
    /// The connection cap (its `refused` counter counts 503s over the cap).
    pub limit: Arc<ConnLimit>,
    /// Counters.
    pub stats: OriginStats,
}

impl Default for Origin {
    fn default() -> Self {
        Self::with_limits(OriginLimits::default())
    }
}

impl Origin {
    /// An empty catalogue with the default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves no segment indexes (404), like a plain file server.
    pub fn without_indexes(mut self) -> Self {
        self.no_indexes = true;
        self
    }

    /// An empty catalogue with these limits.
    pub fn with_limits(limits: OriginLimits) -> Self {
        Self {
            videos: HashMap::new(),
            limit: ConnLimit::new(limits.max_connections),
            limits,
            no_indexes: false,
            stats: OriginStats::default(),
        }
    }

    /// Adds a video under `name` (served at `/name`).
    pub fn add(&mut self, name: &str, video: Video) {
        self.videos
            .insert(format!("/{}", name.trim_start_matches('/')), video);
    }

    /// Runs the accept loop until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => match self.limit.try_acquire() {
                    Some(conn) => {
                        let me = self.clone();
                        tokio::spawn(async move {
                            me.handle(stream).await;
                            drop(conn);
                        });
                    }
                    None => self.limit.refuse(stream),
                },
                Err(e) => {
                    tracing::warn!(cause = %e, "origin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn handle(&self, mut stream: TcpStream) {
        let req = match http::read_request(&mut stream, self.limits.head_timeout).await {
            Ok(r) => r,
            Err(e) => {
                if e == http::HttpError::Timeout {
                    self.stats.head_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(s) = e.status() {
                    http::write_error(&mut stream, s, &[]).await;
                }
                return;
            }
        };
        let Some(video) = self.videos.get(&req.path) else {
            if let Some(v) = req
                .path
                .strip_suffix(hls::INDEX_SUFFIX)
                .filter(|_| !self.no_indexes)
                .and_then(|p| self.videos.get(p))
            {
                // Cutting scans the whole video once; keep it off the async workers.
                let v = v.clone();
                let json = tokio::task::spawn_blocking(move || v.segment_index().to_json())
                    .await
                    .unwrap_or_default();
                let head = ResponseHead::new(200)
                    .header("Content-Type", "application/json")
                    .header("Content-Length", json.len());
                let mut bytes = head.finish();
                if !req.head_only {
                    bytes.extend_from_slice(json.as_bytes());
                }
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
                return;
            }
            http::write_error(&mut stream, 404, &[]).await;
            return;
        };
        let size = video.data.len() as u64;
        let (status, start, end) = match req.range.as_deref() {
            None => (200, 0, size),
            Some(r) => match http::parse_range(r)
                .ok()
                .and_then(|s| http::resolve_range(s, size))
            {
                Some((a, b)) => (206, a, b),
                None => {
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
        let mut head = ResponseHead::new(status)
            .header("Content-Type", "video/mp2t")
            .header("Accept-Ranges", "bytes")
            .header("Content-Length", end - start)
            .header("X-Bitrate", video.bitrate_bps)
            .header("X-Duration-Ms", video.duration_ms());
        if status == 206 {
            head = head.header("Content-Range", format!("bytes {start}-{}/{size}", end - 1));
        }
        let wt = self.limits.write_timeout;
        if http::write_all_timeout(&mut stream, &head.finish(), wt)
            .await
            .is_err()
            || req.head_only
        {
            return;
        }
        self.stats.streams.fetch_add(1, Ordering::Relaxed);
        let body = video.data.slice(start as usize..end as usize);
        for chunk in body.chunks(256 * 1024) {
            if let Err(e) = http::write_all_timeout(&mut stream, chunk, wt).await {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    self.stats.write_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            self.stats
                .bytes_sent
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let _ = stream.shutdown().await;
    }
}
