//! HLS for the distributor, the pure part: the segment index of a video (byte ranges of the
//! origin's file cut at keyframes), its wire form, the media playlist, the request routes,
//! viewer sessions and the per-session fetch allowance. No I/O here: the distributor's side is
//! [`crate::hls_server`], the load generator's [`crate::hls_viewer`].
//!
//! ## Design
//! - **Segments are byte ranges of the file.** The origin scans each video once
//!   ([`crate::scan`]) and serves the index at `GET /{video}.segments.json`
//!   ([`INDEX_SUFFIX`]); the distributor fetches it once per video (a few KB, not a media
//!   stream: the single origin stream per video stays single) and carries it in checkpoints.
//!   A segment starts at a keyframe of the video stream when there is one, at the tables
//!   (PAT/PMT) just before it, so every segment decodes on its own
//!   (`#EXT-X-INDEPENDENT-SEGMENTS`). A video without keyframes (the built-in generator's
//!   silent audio) is cut at PES starts; an origin without an index (a plain file server) gets
//!   fixed-duration cuts on packet boundaries from the size and bitrate ([`SegmentIndex::fixed`]).
//! - **Target 2 s**, one GOP per segment for the `--real` videos: a failed or redirected
//!   fetch costs a player at most 2 s of media.
//! - **Routes** (relative to the video path `/{video}` a progressive viewer uses):
//!   `GET /{video}.m3u8` is the VOD media playlist; its segment URIs are *relative*,
//!   `{video}/seg/{n}.ts?s={session}`, so a player that fetched the playlist through a
//!   front-end (`/watch/{video}.m3u8`) fetches segments through it too.
//! - **Sessions**: a viewer is the session id in its segment URIs (`s=`), given by the
//!   playlist (or chosen by whoever serves the playlist, e.g. a front-end, and passed as
//!   `?s=` to it). A session counts as a client while it fetches and is released after
//!   [`crate::hls_server::HlsConfig::session_timeout`] without a request. A distributor
//!   adopts an unknown but well-formed id (a session that moved here).
//! - **No pacing of segments**; instead each session has an [`Allowance`]: it may fetch
//!   `burst` of media at once, then `factor` × real time. A player's buffer fetches at 1×
//!   in steady state and is never delayed; a player filling its buffer (start-up, or after a
//!   migration) is held to `factor` × the bitrate after the burst, so a session's long-run
//!   rate stays within `factor` × the reserved per-client bitrate.
//!
//! ## Layout
//! - [`SegmentIndex`], [`Segment`]: cutting ([`SegmentIndex::from_timing`],
//!   [`SegmentIndex::fixed`]), JSON wire form, playlist ([`SegmentIndex::playlist`]).
//! - [`MediaPlaylist`]: parser for media playlists (the load generator reads them with it).
//! - [`Route`], [`route`]: request paths; [`SessionId`]; [`Sessions`]; [`Allowance`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::scan::{PTS_HZ, Timing};
use crate::ts::PACKET;

/// The origin serves a video's segment index at its path plus this suffix.
pub const INDEX_SUFFIX: &str = ".segments.json";
/// Playlist path suffix (after the video path).
pub const PLAYLIST_SUFFIX: &str = ".m3u8";
/// Default segment target duration.
pub const DEFAULT_TARGET: Duration = Duration::from_secs(2);
/// An index may not have more segments than this (a 2 h video at 2 s has 3 600).
pub const MAX_SEGMENTS: usize = 1_000_000;
/// A segment may not last longer than this (ten minutes).
const MAX_SEGMENT_90K: u64 = 600 * PTS_HZ;

/// One segment: `[offset, next segment's offset)` of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// First byte.
    pub offset: u64,
    /// Media time of its start, 90 kHz, from the first segment's start.
    pub start_90k: u64,
    /// Duration, 90 kHz.
    pub duration_90k: u64,
}

/// Why an index is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// Not the JSON expected.
    #[error("segment index is not valid JSON: {0}")]
    Json(String),
    /// Well-formed but inconsistent (offsets, durations, counts, version).
    #[error("segment index is inconsistent: {0}")]
    Invalid(&'static str),
}

/// The segments of one video.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentIndex {
    /// Wire format version (1).
    pub version: u32,
    /// File size; the last segment ends there.
    pub size: u64,
    /// Every segment starts at a keyframe (with the tables before it).
    pub keyframe_aligned: bool,
    /// Segments in file order; the first starts at byte 0.
    pub segments: Vec<Segment>,
}

impl SegmentIndex {
    /// Cuts a scanned file (see the module docs) aiming at `target` per segment. None when
    /// the scan found no timestamps (not a TS file the scanner understands).
    pub fn from_timing(t: &Timing, size: u64, target: Duration) -> Option<Self> {
        let keyed = t.keyframes();
        // Prefer keyframes where every stream starts a new PES (see `Point::clean`); a file
        // that has none (made by another muxer) is cut at its keyframes all the same.
        let any_clean = t.points.iter().any(|p| p.key && p.clean);
        let cuttable = |p: &crate::scan::Point| {
            if keyed {
                p.key && (p.clean || !any_clean)
            } else {
                true
            }
        };
        let target_90k = (target.as_millis() as u64 * PTS_HZ / 1000).max(1);
        // Keyframes come at the encoder's GOP, which is often the target itself: accept a
        // keyframe a little early rather than make segments twice as long.
        let enough = if keyed {
            target_90k * 9 / 10
        } else {
            target_90k
        };
        // The first segment starts the file, so its media starts at the earliest timestamp.
        t.points.iter().find(|p| cuttable(p))?;
        let origin_pts = t.points.iter().map(|p| p.pts).min()?;
        let end_pts = t.end_pts?.max(origin_pts + 1);
        let mut cuts: Vec<(u64, u64)> = vec![(0, origin_pts)];
        for p in &t.points {
            let (last_off, last_pts) = *cuts.last()?;
            if cuttable(p)
                && p.offset > last_off
                && p.offset < size
                && p.pts >= last_pts + enough
                && p.pts < end_pts
            {
                cuts.push((p.offset, p.pts));
            }
        }
        let segments = cuts
            .iter()
            .enumerate()
            .map(|(i, &(offset, pts))| {
                let next = cuts.get(i + 1).map(|c| c.1).unwrap_or(end_pts);
                Segment {
                    offset,
                    start_90k: pts - origin_pts,
                    duration_90k: next.saturating_sub(pts).max(1),
                }
            })
            .collect();
        Some(Self {
            version: 1,
            size,
            keyframe_aligned: keyed,
            segments,
        })
    }

    /// Fixed-duration cuts on packet boundaries for a constant-bitrate file known only by
    /// its size, bitrate and duration (an origin that serves no index).
    pub fn fixed(size: u64, bitrate_bps: u64, duration_ms: u64, target: Duration) -> Self {
        let pkt = PACKET as u64;
        let wanted = (target.as_millis() * bitrate_bps.max(1) as u128 / 8000) as u64;
        // Whole packets per segment, at least one, and few enough segments for the limit.
        let per = (wanted / pkt)
            .max(1)
            .max(size.div_ceil(MAX_SEGMENTS as u64).div_ceil(pkt))
            * pkt;
        let total_90k = duration_ms.max(1) * PTS_HZ / 1000;
        let at = |off: u64| (off as u128 * total_90k as u128 / size.max(1) as u128) as u64;
        let segments = (0..size.div_ceil(per).max(1))
            .map(|i| {
                let (a, b) = (i * per, ((i + 1) * per).min(size));
                Segment {
                    offset: a,
                    start_90k: at(a),
                    duration_90k: at(b).saturating_sub(at(a)).max(1),
                }
            })
            .collect();
        Self {
            version: 1,
            size,
            keyframe_aligned: false,
            segments,
        }
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// True when there are no segments (never for an index from this module).
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// `[start, end)` bytes of segment `n`.
    pub fn range(&self, n: usize) -> Option<(u64, u64)> {
        let s = self.segments.get(n)?;
        let end = self.segments.get(n + 1).map_or(self.size, |x| x.offset);
        Some((s.offset, end))
    }

    /// Duration of segment `n` in milliseconds.
    pub fn duration_ms(&self, n: usize) -> Option<u64> {
        self.segments.get(n).map(|s| s.duration_90k * 1000 / PTS_HZ)
    }

    /// Total media duration in milliseconds.
    pub fn total_ms(&self) -> u64 {
        self.segments.iter().map(|s| s.duration_90k).sum::<u64>() * 1000 / PTS_HZ
    }

    /// `EXT-X-TARGETDURATION`: every `EXTINF` rounded to the nearest integer must not exceed
    /// it (RFC 8216 §4.3.3.1).
    pub fn target_duration_s(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| (s.duration_90k + PTS_HZ / 2) / PTS_HZ)
            .max()
            .unwrap_or(1)
            .max(1)
    }

    /// The segment holding byte `offset`.
    pub fn segment_at(&self, offset: u64) -> usize {
        self.segments
            .partition_point(|s| s.offset <= offset)
            .saturating_sub(1)
    }

    /// JSON wire form (what the origin serves).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and checks the JSON wire form: version 1, first segment at 0, offsets strictly
    /// increasing and inside the file, durations positive and bounded, at most
    /// [`MAX_SEGMENTS`].
    pub fn from_json(s: &str) -> Result<Self, IndexError> {
        let ix: SegmentIndex =
            serde_json::from_str(s).map_err(|e| IndexError::Json(e.to_string()))?;
        ix.check()?;
        Ok(ix)
    }

    /// The consistency rules of [`SegmentIndex::from_json`].
    pub fn check(&self) -> Result<(), IndexError> {
        if self.version != 1 {
            return Err(IndexError::Invalid("unknown version"));
        }
        if self.segments.is_empty() || self.segments.len() > MAX_SEGMENTS {
            return Err(IndexError::Invalid("segment count"));
        }
        if self.segments[0].offset != 0 {
            return Err(IndexError::Invalid("first segment must start at byte 0"));
        }
        if self.segments.windows(2).any(|w| w[1].offset <= w[0].offset)
            || self.segments.iter().any(|s| s.offset >= self.size.max(1))
        {
            return Err(IndexError::Invalid("offsets"));
        }
        if self
            .segments
            .iter()
            .any(|s| s.duration_90k == 0 || s.duration_90k > MAX_SEGMENT_90K)
        {
            return Err(IndexError::Invalid("durations"));
        }
        Ok(())
    }

    /// The VOD media playlist. Segment URIs are `{uri_prefix}{n}.ts` followed by `?{query}`
    /// when `query` is not empty.
    pub fn playlist(&self, uri_prefix: &str, query: &str) -> String {
        let mut s = String::with_capacity(96 + self.segments.len() * (uri_prefix.len() + 40));
        s.push_str("#EXTM3U\n#EXT-X-VERSION:3\n");
        let _ = writeln!(s, "#EXT-X-TARGETDURATION:{}", self.target_duration_s());
        s.push_str("#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n");
        if self.keyframe_aligned {
            s.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
        }
        for (n, seg) in self.segments.iter().enumerate() {
            let ms = seg.duration_90k * 1000 / PTS_HZ;
            let _ = write!(
                s,
                "#EXTINF:{}.{:03},\n{uri_prefix}{n}.ts",
                ms / 1000,
                ms % 1000
            );
            if !query.is_empty() {
                s.push('?');
                s.push_str(query);
            }
            s.push('\n');
        }
        s.push_str("#EXT-X-ENDLIST\n");
        s
    }
}

/// A parsed media playlist (the subset this project writes and players need).
#[derive(Debug, Clone, PartialEq)]
pub struct MediaPlaylist {
    /// `EXT-X-TARGETDURATION`.
    pub target_duration_s: u64,
    /// `(EXTINF duration in seconds, URI)` in order.
    pub segments: Vec<(f64, String)>,
    /// `EXT-X-ENDLIST` seen.
    pub ended: bool,
    /// `EXT-X-PLAYLIST-TYPE:VOD` seen.
    pub vod: bool,
}

/// Why a playlist was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaylistError {
    /// It does not start with `#EXTM3U`.
    #[error("not an M3U8 playlist")]
    NotM3u,
    /// A tag with a bad value, or an `EXTINF` without its URI.
    #[error("bad playlist line {0}")]
    BadLine(usize),
    /// No `EXT-X-TARGETDURATION`.
    #[error("playlist has no target duration")]
    NoTarget,
}

impl MediaPlaylist {
    /// Parses a media playlist.
    pub fn parse(text: &str) -> Result<Self, PlaylistError> {
        let mut lines = text.lines().map(str::trim).enumerate();
        if lines.next().map(|l| l.1) != Some("#EXTM3U") {
            return Err(PlaylistError::NotM3u);
        }
        let mut p = MediaPlaylist {
            target_duration_s: 0,
            segments: Vec::new(),
            ended: false,
            vod: false,
        };
        let mut pending: Option<f64> = None;
        for (i, line) in lines {
            let bad = || PlaylistError::BadLine(i + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
                p.target_duration_s = v.parse().map_err(|_| bad())?;
            } else if let Some(v) = line.strip_prefix("#EXTINF:") {
                let d = v.split(',').next().unwrap_or("");
                let d: f64 = d.parse().map_err(|_| bad())?;
                if !d.is_finite() || d < 0.0 || pending.is_some() {
                    return Err(bad());
                }
                pending = Some(d);
            } else if line == "#EXT-X-ENDLIST" {
                p.ended = true;
            } else if line == "#EXT-X-PLAYLIST-TYPE:VOD" {
                p.vod = true;
            } else if line.starts_with('#') {
                // Other tags and comments do not change what a player fetches here.
            } else {
                let d = pending.take().ok_or_else(bad)?;
                p.segments.push((d, line.to_string()));
            }
        }
        if pending.is_some() {
            return Err(PlaylistError::BadLine(text.lines().count()));
        }
        if p.target_duration_s == 0 {
            return Err(PlaylistError::NoTarget);
        }
        Ok(p)
    }
}

/// An HLS request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /{video}.m3u8`.
    Playlist {
        /// The video's path, e.g. `/v.ts`.
        video: String,
    },
    /// `GET /{video}/seg/{n}.ts`.
    Segment {
        /// The video's path.
        video: String,
        /// Segment number.
        n: u64,
    },
}

/// A path that looks like an HLS request but cannot be one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The segment number is not a plain decimal number that fits.
    #[error("bad segment number {0:?}")]
    BadSegment(String),
    /// No video before the suffix.
    #[error("no video in HLS path")]
    NoVideo,
}

/// Classifies a request path: None when it is not an HLS path (a progressive request).
pub fn route(path: &str) -> Option<Result<Route, RouteError>> {
    if let Some(video) = path.strip_suffix(PLAYLIST_SUFFIX) {
        if video.len() <= 1 || video.ends_with('/') {
            return Some(Err(RouteError::NoVideo));
        }
        return Some(Ok(Route::Playlist {
            video: video.to_string(),
        }));
    }
    let (video, file) = path.rsplit_once("/seg/")?;
    let digits = file.strip_suffix(".ts")?;
    if video.len() <= 1 {
        return Some(Err(RouteError::NoVideo));
    }
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Err(RouteError::BadSegment(
            digits.chars().take(40).collect(),
        )));
    }
    Some(
        digits
            .parse::<u64>()
            .map(|n| Route::Segment {
                video: video.to_string(),
                n,
            })
            .map_err(|_| RouteError::BadSegment(digits.to_string())),
    )
}

/// The value of `key` in a query string (`a=1&s=x`), undecoded.
pub fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// A viewer session id: 1 to 32 characters of `[A-Za-z0-9_-]` (URL-safe without escaping).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(String);

impl SessionId {
    /// Checks a client-supplied id.
    pub fn parse(s: &str) -> Option<Self> {
        (!s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| Self(s.to_string()))
    }

    /// A new id from 64 random bits (16 hex digits).
    pub fn from_bits(bits: u64) -> Self {
        Self(format!("{bits:016x}"))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The session table: last request time per session, expiry, a size limit. `T` is what the
/// server keeps per session.
#[derive(Debug)]
pub struct Sessions<T> {
    map: HashMap<SessionId, (Instant, T)>,
    timeout: Duration,
    max: usize,
}

/// The table is full (a client creating sessions in a loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many HLS sessions")]
pub struct SessionsFull;

impl<T> Sessions<T> {
    /// Sessions expire `timeout` after their last request; at most `max` at once.
    pub fn new(timeout: Duration, max: usize) -> Self {
        Self {
            map: HashMap::new(),
            timeout,
            max,
        }
    }

    /// Sessions now (call [`Sessions::sweep`] first for an exact count).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True without sessions.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// True if `id` is a live session.
    pub fn contains(&self, id: &SessionId) -> bool {
        self.map.contains_key(id)
    }

    /// Records a request of `id` at `now`, creating the session with `make` if it is new.
    /// Returns its data and whether it was created.
    pub fn touch(
        &mut self,
        id: &SessionId,
        now: Instant,
        make: impl FnOnce() -> T,
    ) -> Result<(&mut T, bool), SessionsFull> {
        let full = self.map.len() >= self.max;
        match self.map.entry(id.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let v = e.into_mut();
                v.0 = v.0.max(now);
                Ok((&mut v.1, false))
            }
            std::collections::hash_map::Entry::Vacant(_) if full => Err(SessionsFull),
            std::collections::hash_map::Entry::Vacant(e) => {
                Ok((&mut e.insert((now, make())).1, true))
            }
        }
    }

    /// The data of a live session, without counting a request.
    pub fn get_mut(&mut self, id: &SessionId) -> Option<&mut T> {
        self.map.get_mut(id).map(|(_, d)| d)
    }

    /// Inserts a session whose last request was at `last` (a restored one).
    pub fn insert_at(&mut self, id: SessionId, last: Instant, data: T) -> Result<(), SessionsFull> {
        if self.map.len() >= self.max && !self.map.contains_key(&id) {
            return Err(SessionsFull);
        }
        self.map.insert(id, (last, data));
        Ok(())
    }

    /// Removes and returns the sessions idle for longer than the timeout at `now`.
    pub fn sweep(&mut self, now: Instant) -> Vec<(SessionId, T)> {
        let timeout = self.timeout;
        let expired: Vec<SessionId> = self
            .map
            .iter()
            .filter(|(_, (last, _))| now.saturating_duration_since(*last) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|id| self.map.remove(&id).map(|(_, d)| (id, d)))
            .collect()
    }

    /// Removes every session.
    pub fn drain(&mut self) -> Vec<(SessionId, T)> {
        self.map.drain().map(|(id, (_, d))| (id, d)).collect()
    }

    /// `(id, idle time at now, data)` of every session.
    pub fn iter(&self, now: Instant) -> impl Iterator<Item = (&SessionId, Duration, &T)> {
        self.map
            .iter()
            .map(move |(id, (last, d))| (id, now.saturating_duration_since(*last), d))
    }
}

/// A session's fetch allowance, in milliseconds of media: starts at `burst`, grows at
/// `factor` × real time up to `burst`, and each segment spends its duration. A request that
/// would overdraw it waits until the allowance has grown back (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Allowance {
    credit_ms: f64,
    at: Instant,
}

impl Allowance {
    /// A full allowance at `now`.
    pub fn new(now: Instant, burst: Duration) -> Self {
        Self {
            credit_ms: burst.as_secs_f64() * 1000.0,
            at: now,
        }
    }

    /// Spends `media_ms` at `now`; returns how long the request must wait first.
    pub fn spend(&mut self, now: Instant, media_ms: u64, burst: Duration, factor: f64) -> Duration {
        let factor = factor.max(0.01);
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64() * 1000.0;
        let cap = burst.as_secs_f64() * 1000.0;
        self.credit_ms = (self.credit_ms + elapsed * factor).min(cap);
        self.at = now.max(self.at);
        let need = media_ms as f64;
        let wait = if self.credit_ms >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.credit_ms) / factor / 1000.0)
        };
        self.credit_ms -= need;
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{self, Point};
    use crate::ts::{VideoParams, generate};
    use proptest::prelude::*;

    fn index_strategy() -> impl Strategy<Value = SegmentIndex> {
        (
            proptest::collection::vec((1u64..50_000, 1u64..20 * PTS_HZ), 1..60),
            any::<bool>(),
            1u64..10_000,
        )
            .prop_map(|(segs, keyed, tail)| {
                let mut off = 0;
                let mut start = 0;
                let segments = segs
                    .iter()
                    .map(|&(len, dur)| {
                        let s = Segment {
                            offset: off,
                            start_90k: start,
                            duration_90k: dur,
                        };
                        off += len * PACKET as u64;
                        start += dur;
                        s
                    })
                    .collect::<Vec<_>>();
                let last = segments.last().map_or(0, |s| s.offset);
                SegmentIndex {
                    version: 1,
                    size: last + tail,
                    keyframe_aligned: keyed,
                    segments,
                }
            })
    }

    proptest! {
        #[test]
        fn index_json_round_trip(ix in index_strategy()) {
            prop_assert_eq!(SegmentIndex::from_json(&ix.to_json()), Ok(ix));
        }

        #[test]
        fn playlist_round_trip(ix in index_strategy(), sid in "[a-f0-9]{16}") {
            let text = ix.playlist("v.ts/seg/", &format!("s={sid}"));
            let p = MediaPlaylist::parse(&text).unwrap();
            prop_assert!(p.ended && p.vod);
            prop_assert_eq!(p.target_duration_s, ix.target_duration_s());
            prop_assert_eq!(p.segments.len(), ix.len());
            for (n, (d, uri)) in p.segments.iter().enumerate() {
                prop_assert_eq!(uri, &format!("v.ts/seg/{n}.ts?s={sid}"));
                let ms = ix.duration_ms(n).unwrap();
                prop_assert!((d * 1000.0 - ms as f64).abs() < 0.5);
                // RFC 8216: rounded EXTINF never exceeds the target duration.
                prop_assert!(d.round() as u64 <= p.target_duration_s);
            }
        }

        #[test]
        fn fixed_cuts_cover_the_file_on_packet_boundaries(
            packets in 1u64..200_000, kbps in 64u64..20_000, target_ms in 500u64..10_000,
        ) {
            let size = packets * PACKET as u64;
            let duration_ms = (size * 8 / kbps).max(1);
            let ix = SegmentIndex::fixed(size, kbps * 1000, duration_ms, Duration::from_millis(target_ms));
            prop_assert_eq!(ix.check(), Ok(()));
            let mut end = 0;
            for n in 0..ix.len() {
                let (a, b) = ix.range(n).unwrap();
                prop_assert_eq!(a, end);
                prop_assert_eq!(a % PACKET as u64, 0);
                prop_assert!(b > a);
                end = b;
            }
            prop_assert_eq!(end, size);
        }

        #[test]
        fn routes_never_panic(path in "/[ -~]{0,60}") {
            let _ = route(&path);
        }

        #[test]
        fn allowance_bounds_the_long_run_rate(gaps in proptest::collection::vec(0u64..3000, 1..200)) {
            // A session fetching 2 s segments as fast as it may: media fetched by time T is at
            // most burst + factor × T.
            let (burst, factor) = (Duration::from_secs(10), 1.5);
            let t0 = Instant::now();
            let mut a = Allowance::new(t0, burst);
            let mut now = t0;
            let mut fetched = 0u64;
            for g in gaps {
                now += Duration::from_millis(g);
                now += a.spend(now, 2000, burst, factor);
                fetched += 2000;
                let limit = 10_000.0 + factor * now.duration_since(t0).as_secs_f64() * 1000.0;
                prop_assert!(fetched as f64 <= limit + 1.0, "{fetched} > {limit}");
            }
        }
    }

    #[test]
    fn bad_indexes_are_refused() {
        let good = SegmentIndex::fixed(188 * 1000, 400_000, 3760, DEFAULT_TARGET);
        assert!(good.len() > 1);
        let mut bad = good.clone();
        bad.segments[1].offset = 0;
        assert!(SegmentIndex::from_json(&bad.to_json()).is_err());
        let mut bad = good.clone();
        bad.segments[0].offset = 188;
        assert!(bad.check().is_err());
        let mut bad = good.clone();
        bad.segments.last_mut().unwrap().offset = bad.size;
        assert!(bad.check().is_err());
        let mut bad = good.clone();
        bad.segments[0].duration_90k = 0;
        assert!(bad.check().is_err());
        let mut bad = good;
        bad.version = 2;
        assert!(bad.check().is_err());
        assert!(matches!(
            SegmentIndex::from_json("{\"version\":1"),
            Err(IndexError::Json(_))
        ));
    }

    #[test]
    fn generated_video_is_cut_at_audio_frames_near_the_target() {
        let params = VideoParams {
            bitrate_bps: 400_000,
            duration_ms: 21_000,
        };
        let data = generate(params).unwrap();
        let t = scan::scan(&data);
        let ix = SegmentIndex::from_timing(&t, data.len() as u64, DEFAULT_TARGET).unwrap();
        assert!(!ix.keyframe_aligned);
        assert_eq!(ix.check(), Ok(()));
        let frames: Vec<u64> = t.points.iter().map(|p| p.offset).collect();
        for (n, s) in ix.segments.iter().enumerate() {
            if n > 0 {
                assert!(frames.contains(&s.offset), "segment {n} starts at a PES");
            }
        }
        // All but the last are within one audio frame (24 ms) over the target.
        for n in 0..ix.len() - 1 {
            let ms = ix.duration_ms(n).unwrap();
            assert!((2000..2024).contains(&ms), "segment {n}: {ms} ms");
        }
        assert!(ix.total_ms().abs_diff(params.duration_ms) <= 48);
        assert_eq!(ix.target_duration_s(), 2);
    }

    #[test]
    fn keyframe_cuts_wait_for_the_next_keyframe() {
        // Keyframes every 1.5 s with a 2 s target: segments are 3 s (two GOPs).
        let points: Vec<Point> = (0..40u64)
            .map(|f| Point {
                offset: 1000 * PACKET as u64 + f * 10 * PACKET as u64,
                pts: 90_000 + f * 13_500, // 150 ms frames
                key: f % 10 == 0,
                clean: true,
            })
            .collect();
        let t = scan::Timing {
            streams: vec![],
            timing: Some(scan::Stream {
                pid: 0x100,
                stream_type: 0x1B,
            }),
            end_pts: Some(90_000 + 40 * 13_500),
            points,
            pcr_span: None,
            bad_packets: 0,
        };
        let ix = SegmentIndex::from_timing(&t, 2_000 * PACKET as u64, DEFAULT_TARGET).unwrap();
        assert!(ix.keyframe_aligned);
        let d: Vec<u64> = (0..ix.len()).map(|n| ix.duration_ms(n).unwrap()).collect();
        assert_eq!(d, vec![3000, 3000]);
        assert_eq!(
            ix.segments[0].offset, 0,
            "the first segment starts the file"
        );
        assert_eq!(ix.segments[1].offset, 1200 * PACKET as u64);
        assert_eq!(ix.target_duration_s(), 3);
        assert_eq!(ix.segment_at(0), 0);
        assert_eq!(ix.segment_at(1200 * PACKET as u64), 1);
        assert_eq!(ix.segment_at(u64::MAX), 1);
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("/v.ts.m3u8"),
            Some(Ok(Route::Playlist {
                video: "/v.ts".into()
            }))
        );
        assert_eq!(
            route("/v.ts/seg/12.ts"),
            Some(Ok(Route::Segment {
                video: "/v.ts".into(),
                n: 12
            }))
        );
        assert_eq!(route("/v.ts"), None);
        assert_eq!(route("/v.ts/seg/12.mp4"), None);
        assert_eq!(route("/.m3u8"), Some(Err(RouteError::NoVideo)));
        for bad in ["-1", "1e3", "", "99999999999999999999", "+4", "0x10"] {
            assert!(
                matches!(route(&format!("/v/seg/{bad}.ts")), Some(Err(_))),
                "{bad}"
            );
        }
        assert_eq!(query_param("a=1&s=abc", "s"), Some("abc"));
        assert_eq!(query_param("a=1", "s"), None);
        assert!(SessionId::parse("abc-_09").is_some());
        for bad in ["", "a b", "a/b", &"x".repeat(33), "é"] {
            assert!(SessionId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn playlist_parser_refuses_garbage() {
        assert_eq!(MediaPlaylist::parse("hello"), Err(PlaylistError::NotM3u));
        assert!(MediaPlaylist::parse("#EXTM3U\n#EXTINF:2,\n").is_err());
        assert!(MediaPlaylist::parse("#EXTM3U\n#EXTINF:x,\na.ts\n").is_err());
        assert!(MediaPlaylist::parse("#EXTM3U\na.ts\n").is_err());
        assert_eq!(
            MediaPlaylist::parse("#EXTM3U\n#EXTINF:2,\na.ts\n"),
            Err(PlaylistError::NoTarget)
        );
    }

    #[test]
    fn sessions_expire_and_are_bounded() {
        let t0 = Instant::now();
        let mut s: Sessions<u32> = Sessions::new(Duration::from_secs(10), 2);
        let (a, b, c) = (
            SessionId::from_bits(1),
            SessionId::from_bits(2),
            SessionId::from_bits(3),
        );
        assert_eq!(s.touch(&a, t0, || 1).map(|x| (*x.0, x.1)), Ok((1, true)));
        assert_eq!(s.touch(&a, t0, || 9).map(|x| (*x.0, x.1)), Ok((1, false)));
        assert!(s.touch(&b, t0 + Duration::from_secs(5), || 2).is_ok());
        assert_eq!(s.touch(&c, t0, || 3).err(), Some(SessionsFull));
        let gone = s.sweep(t0 + Duration::from_secs(11));
        assert_eq!(gone, vec![(a.clone(), 1)]);
        assert_eq!(s.len(), 1);
        assert!(s.contains(&b));
        assert!(s.sweep(t0 + Duration::from_secs(15)).is_empty());
        assert_eq!(s.sweep(t0 + Duration::from_secs(16)).len(), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn allowance_waits_only_when_ahead() {
        let (burst, factor) = (Duration::from_secs(10), 1.5);
        let t0 = Instant::now();
        let mut a = Allowance::new(t0, burst);
        // Five 2 s segments at once: the burst.
        for _ in 0..5 {
            assert_eq!(a.spend(t0, 2000, burst, factor), Duration::ZERO);
        }
        // The sixth waits 2000 / 1.5 ms.
        let w = a.spend(t0, 2000, burst, factor);
        assert!((w.as_secs_f64() - 2.0 / 1.5).abs() < 1e-6, "{w:?}");
        // A player at 1× (one 2 s segment every 2 s) never waits once it is in step.
        let mut now = t0 + w;
        for _ in 0..100 {
            now += Duration::from_secs(2);
            assert_eq!(a.spend(now, 2000, burst, factor), Duration::ZERO);
        }
    }
}
