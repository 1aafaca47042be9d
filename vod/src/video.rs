//! The state the distributor's three request paths share: a video's cache entry
//! ([`VideoEntry`]), the distributor's [`Mode`] and counters ([`Stats`]), and waiting for a
//! cache block ([`wait_block`]). Progressive serving ([`crate::distributor`]), the pacer
//! threads ([`crate::pacer`]) and HLS ([`crate::hls_server`]) all read it; it lives here,
//! below all three, so that none of them imports another's internals.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, watch};

use crate::cache::BlockCache;
use crate::http::Url;

pub use smart_proto::workload::VideoMeta;

/// What the distributor does with requests and viewers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Normal service.
    Serving,
    /// No new viewers (503); existing ones continue.
    Draining,
    /// Viewers were sent to this base URL; every request is redirected there (307).
    HandedOff(Url),
    /// Viewers closed, requests refused (503), fetchers stopped.
    Stopped,
}

/// Counters (monotonic unless noted).
#[derive(Debug, Default)]
pub struct Stats {
    /// Body bytes sent to viewers.
    pub bytes_sent: AtomicU64,
    /// Bytes received from the origin.
    pub bytes_received: AtomicU64,
    /// Origin streams opened (GET requests to the origin).
    pub origin_streams: AtomicU64,
    /// Viewer connections served.
    pub viewers_total: AtomicU64,
    /// Viewer connections now (gauge).
    pub viewers_active: AtomicU64,
    /// Requests answered with an error status.
    pub errors: AtomicU64,
    /// Requests redirected after a handoff.
    pub redirects: AtomicU64,
    /// Viewer connections that ended with a write error (the viewer left).
    pub write_errors: AtomicU64,
    /// Viewers dropped because their socket accepted nothing for the write timeout.
    pub write_timeouts: AtomicU64,
    /// Connections dropped because their request head did not arrive in time.
    pub head_timeouts: AtomicU64,
    /// Requests for another video than the one this distributor was started for (404).
    pub other_video: AtomicU64,
    /// Cache bytes loaded by restores.
    pub restored_bytes: AtomicU64,
    /// Origin bytes fetched for blocks a restore had delivered.
    pub refetched_bytes: AtomicU64,
}

/// Why a video cannot be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VideoError {
    /// The origin does not have it (404).
    #[error("no such video")]
    NotFound,
    /// The origin failed or answered nonsense (502).
    #[error("origin: {0}")]
    Origin(String),
}

/// One video: metadata, cache, and the two wake-ups (data for viewers, work for the fetcher).
#[derive(Debug)]
pub(crate) struct VideoEntry {
    pub(crate) meta: VideoMeta,
    /// The cache's block size (fixed), readable without the lock.
    pub(crate) block_size: u64,
    pub(crate) cache: Mutex<BlockCache>,
    pub(crate) data_ready: Notify,
    pub(crate) fetch_wake: Notify,
    /// Blocks a restore stored: fetching one from the origin again is a refetch.
    pub(crate) restored: Mutex<std::collections::HashSet<u64>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave BlockCache half-updated in a way that
    // matters more than stopping service would, so keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves when the mode becomes `HandedOff` (or the distributor is gone).
pub(crate) async fn handed_off(mode: &mut watch::Receiver<Mode>) {
    let _ = mode
        .wait_for(|m| matches!(m, Mode::HandedOff(_) | Mode::Stopped))
        .await;
}

/// Block `b`, waiting for the fetcher when it is missing; None on handoff.
pub(crate) async fn wait_block(
    entry: &VideoEntry,
    b: u64,
    mode: &mut watch::Receiver<Mode>,
) -> Option<Bytes> {
    loop {
        let notified = entry.data_ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut c = lock(&entry.cache);
            if let Some(d) = c.get(b) {
                return Some(d);
            }
            c.want(b);
        }
        entry.fetch_wake.notify_one();
        tokio::select! {
            _ = notified => {}
            _ = handed_off(mode) => return None,
            // Bound the wait so a lost origin never parks a viewer forever unnoticed.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
