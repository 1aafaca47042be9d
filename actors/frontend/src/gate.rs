//! Viewer-facing admission, before anything reaches the Control (the "Viewers" rules of
//! docs/security.md):
//!
//! - [`Catalogue`]: only videos the origin has. `HEAD {origin}/{video}` answers whether it
//!   exists and, from `X-Bitrate` and `X-Duration-Ms` (`smart_vod::origin`), what its
//!   distributor will need; the answer (known or unknown) is cached per video for
//!   `[frontend] catalogue_ttl`. An unreachable origin is not cached (the next viewer asks
//!   again).
//! - [`RateLimiter`]: token buckets, one per key: per client address on admissions that may
//!   start a service (`[frontend] new_services_per_sec`, `new_services_burst`), per client
//!   address on every viewer admission (`viewer_admissions_*`) and per video on every
//!   viewer admission (`video_admissions_*`). A stranger's `/watch` flood therefore holds
//!   at most its bucket's worth of reservations, each for about the Control's arrival
//!   window (`timing.client_arrival_window`) unless its viewer arrives.
//! - [`client_address`]: whose bucket a request takes from: the connection's address, or,
//!   from a trusted proxy (`[frontend] trusted_proxies`), the address it forwards for.
//!
//! The decisions are pure functions ([`video_info`], [`Bucket::take`], [`client_address`]);
//! the shells only add the clock, the HTTP request and the tables' bounds.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// What the origin says about a video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct VideoInfo {
    /// Its bitrate, bits/s (the per-client network increment).
    pub bitrate_bps: u64,
    /// Its duration, when the origin says.
    pub duration_ms: Option<u64>,
}

/// Why a video cannot be admitted on the origin's word. `NotFound` is final for the cache's
/// TTL; the others are the origin's trouble and are retried by the next viewer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum CatalogueError {
    /// The origin has no such video.
    #[error("no such video")]
    NotFound,
    /// The origin did not answer (connect, timeout).
    #[error("the origin is unreachable: {0}")]
    Unreachable(String),
    /// The origin answered something other than the video or 404.
    #[error("the origin answered {0}")]
    Refused(u16),
}

impl CatalogueError {
    /// Kept in the cache (the origin's answer), rather than asked again.
    fn cacheable(&self) -> bool {
        matches!(self, CatalogueError::NotFound)
    }
}

/// The origin's answer to `HEAD /{video}`: status and the two headers. A header that is
/// missing or not a positive integer is ignored (`fallback_bps` for the bitrate, no
/// duration).
pub(super) fn video_info(
    status: u16,
    bitrate: Option<&str>,
    duration_ms: Option<&str>,
    fallback_bps: u64,
) -> Result<VideoInfo, CatalogueError> {
    let positive = |v: Option<&str>| {
        v.and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&n| n > 0)
    };
    match status {
        200 | 206 => Ok(VideoInfo {
            bitrate_bps: positive(bitrate).unwrap_or(fallback_bps),
            duration_ms: positive(duration_ms),
        }),
        404 | 410 => Err(CatalogueError::NotFound),
        s => Err(CatalogueError::Refused(s)),
    }
}

/// Entries kept at most: expired ones are dropped when full, and beyond that answers are
/// not cached (a flood of random names cannot grow the table).
const MAX_ENTRIES: usize = 100_000;

/// One cached answer: when it was heard, and what.
type Entry = (Instant, Result<VideoInfo, CatalogueError>);

/// The origin's catalogue as the front-end last heard it.
pub(super) struct Catalogue {
    origin: String,
    fallback_bps: u64,
    ttl: Duration,
    http: reqwest::Client,
    cache: Mutex<HashMap<String, Entry>>,
}

impl Catalogue {
    /// The catalogue of `origin` (a base URL such as `http://10.0.0.1:8000`).
    pub(super) fn new(origin: &str, fallback_bps: u64, ttl: Duration, timeout: Duration) -> Self {
        smart_node::tls::install_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            origin: origin.trim_end_matches('/').to_string(),
            fallback_bps,
            ttl,
            http,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, video: &str, now: Instant) -> Option<Result<VideoInfo, CatalogueError>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(video)
            .filter(|(at, _)| now.duration_since(*at) < self.ttl)
            .map(|(_, r)| r.clone())
    }

    fn keep(&self, video: &str, r: &Result<VideoInfo, CatalogueError>, now: Instant) {
        if r.as_ref().is_err_and(|e| !e.cacheable()) {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| now.duration_since(*at) < ttl);
        }
        if cache.len() < MAX_ENTRIES || cache.contains_key(video) {
            cache.insert(video.to_string(), (now, r.clone()));
        }
    }

    /// What the origin says about `video` (a name `valid_video` accepted), from the cache
    /// when fresh.
    pub(super) async fn lookup(&self, video: &str) -> Result<VideoInfo, CatalogueError> {
        if let Some(r) = self.cached(video, Instant::now()) {
            return r;
        }
        let url = format!("{}/{video}", self.origin);
        let r = match self.http.head(&url).send().await {
            Ok(resp) => {
                let h = resp.headers();
                let text = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
                video_info(
                    resp.status().as_u16(),
                    text("x-bitrate"),
                    text("x-duration-ms"),
                    self.fallback_bps,
                )
            }
            Err(e) => Err(CatalogueError::Unreachable(e.to_string())),
        };
        self.keep(video, &r, Instant::now());
        r
    }
}

/// One client address's token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(super) fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// Refills at `rate` per second up to `burst`, then takes one token; when there is
    /// none, how long until there is.
    pub(super) fn take(&mut self, now: Instant, rate: f64, burst: u32) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    /// Full again by `now` (it can be forgotten: a new one starts full).
    fn refilled(&self, now: Instant, rate: f64, burst: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * rate >= f64::from(burst)
    }
}

/// Keys tracked at most; beyond that, new keys are refused until buckets refill and are
/// forgotten.
const MAX_KEYS: usize = 100_000;

/// Token buckets per key (a client address, a video).
pub(super) struct RateLimiter<K> {
    rate: f64,
    burst: u32,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `rate` tokens per second, `burst` at most (validated by the config).
    pub(super) fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token of `key`'s bucket; when there is none, how long until there is.
    pub(super) fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let (rate, burst) = (self.rate, self.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= MAX_KEYS {
            buckets.retain(|_, b| !b.refilled(now, rate, burst));
            if buckets.len() >= MAX_KEYS {
                return Err(Duration::from_secs_f64(1.0 / rate));
            }
        }
        buckets
            .entry(key.clone())
            .or_insert_with(|| Bucket::full(burst, now))
            .take(now, rate, burst)
    }
}

/// The client a request comes from: `peer` (the connection's address), unless `peer` is a
/// trusted proxy, in which case the rightmost address of its `X-Forwarded-For` values that
/// is not a trusted proxy itself (addresses further left were written by the client and
/// prove nothing). A trusted proxy that names no usable address is the client.
pub(super) fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut hops = forwarded_for
        .rev()
        .flat_map(|v| v.rsplit(','))
        .map(str::trim);
    for hop in hops.by_ref() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return ip,
            // Junk where an address should be: nothing there can be believed, so the
            // proxy's own address stands.
            Err(_) => break,
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origins_answer_decides() {
        assert_eq!(
            video_info(200, Some("4000000"), Some("7200000"), 400_000),
            Ok(VideoInfo {
                bitrate_bps: 4_000_000,
                duration_ms: Some(7_200_000)
            })
        );
        // Missing or junk headers: the configured bitrate, no duration.
        assert_eq!(
            video_info(200, None, Some("x"), 400_000),
            Ok(VideoInfo {
                bitrate_bps: 400_000,
                duration_ms: None
            })
        );
        assert_eq!(
            video_info(206, Some("0"), Some("-5"), 123),
            Ok(VideoInfo {
                bitrate_bps: 123,
                duration_ms: None
            })
        );
        assert_eq!(
            video_info(404, Some("1"), None, 1),
            Err(CatalogueError::NotFound)
        );
        assert_eq!(
            video_info(410, None, None, 1),
            Err(CatalogueError::NotFound)
        );
        assert_eq!(
            video_info(503, None, None, 1),
            Err(CatalogueError::Refused(503))
        );
        assert_eq!(
            video_info(302, None, None, 1),
            Err(CatalogueError::Refused(302))
        );
        assert!(CatalogueError::NotFound.cacheable());
        assert!(!CatalogueError::Unreachable("x".into()).cacheable());
        assert!(!CatalogueError::Refused(503).cacheable());
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(3, t0);
        for _ in 0..3 {
            assert_eq!(b.take(t0, 2.0, 3), Ok(()));
        }
        assert_eq!(b.take(t0, 2.0, 3), Err(Duration::from_millis(500)));
        // 250 ms at 2/s: half a token, 250 ms more to wait.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(b.take(t1, 2.0, 3), Err(Duration::from_millis(250)));
        let t2 = t0 + Duration::from_millis(500);
        assert_eq!(b.take(t2, 2.0, 3), Ok(()));
        assert!(b.take(t2, 2.0, 3).is_err());
        // A long pause refills to the burst, not beyond.
        let t3 = t2 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(b.take(t3, 2.0, 3), Ok(()));
        }
        assert!(b.take(t3, 2.0, 3).is_err());
    }

    #[test]
    fn buckets_are_per_key() {
        let l = RateLimiter::new(1.0, 2);
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(l.take(&a, t0).is_ok());
        assert!(l.take(&a, t0).is_ok());
        assert_eq!(l.take(&a, t0), Err(Duration::from_secs(1)));
        assert!(l.take(&b, t0).is_ok());
        assert!(l.take(&a, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn only_a_trusted_proxy_names_the_client() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let of = |peer: &str, xff: &[&str]| client_address(ip(peer), xff.iter().copied(), &trusted);
        // Not a proxy: its header is ignored.
        assert_eq!(of("192.0.2.7", &["198.51.100.1"]), ip("192.0.2.7"));
        // A proxy: the rightmost untrusted hop, across headers and commas.
        assert_eq!(of("10.1.1.1", &["198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(
            of("10.1.1.1", &["1.2.3.4, 198.51.100.1", "10.2.2.2"]),
            ip("198.51.100.1")
        );
        // What the client wrote further left does not count.
        assert_eq!(
            of("10.1.1.1", &["6.6.6.6, 198.51.100.2"]),
            ip("198.51.100.2")
        );
        // Nothing, or junk, after trusted hops: the proxy's own address.
        assert_eq!(of("10.1.1.1", &[]), ip("10.1.1.1"));
        assert_eq!(of("10.1.1.1", &["junk, 10.3.3.3"]), ip("10.1.1.1"));
        assert_eq!(of("10.1.1.1", &["2001:db8::1"]), ip("2001:db8::1"));
        // No trusted proxies (the default): always the connection's address.
        assert_eq!(
            client_address(ip("10.1.1.1"), ["198.51.100.1"].into_iter(), &[]),
            ip("10.1.1.1")
        );
    }
}
