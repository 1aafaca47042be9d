//! The workload control API, server side: how SMART's Agent86 drives a distributor
//! (usage, checkpoint, restore, handoff, drain, resume, stop). The protocol itself (one JSON
//! object per line on `$SMART_CONTROL_SOCKET`, the checkpoint format) and its one client,
//! [`WorkloadClient`], are in `smart_proto::workload`, documented there for other workloads.
//!
//! What the distributor does for each operation:
//! - `usage`: its counters (`origin_streams`, `viewers_total`, cache hits/misses/evictions,
//!   errors, redirects, write errors and timeouts, connections refused over the cap
//!   (`over_capacity`, `max_connections`) and the mode besides the required keys); `clients` are
//!   progressive connections plus live HLS sessions (a session is live until it has made no
//!   request for the HLS session timeout, 20 s by default);
//! - `checkpoint`: the cache taken by reference while it keeps serving (blocks never
//!   change), so the checkpoint is one consistent pass; viewer positions at block
//!   granularity, which the restoring instance pins for [`crate::distributor::PIN_TTL`];
//!   the HLS segment indexes and live sessions in the header's `hls` extension;
//! - `restore`: connects to the source's socket, asks `checkpoint`, loads it while the
//!   source keeps serving (pre-copy);
//! - `handoff`: closes every viewer connection at once and answers every later request
//!   (the viewers' reconnects included) with `307` to the same path under `to` (HLS
//!   requests keep their query, which holds the session). Keep the
//!   source running for a grace period after the reply so reconnecting viewers find their
//!   redirect; viewers that arrive after it is gone need a front-end URL;
//! - `drain` / `resume` / `stop`.
//!
//! ## Layout
//! - [`serve`]: the server side over a [`Distributor`].
//! - [`restore`]: pre-copy from a source socket into a distributor; [`migrate`]: restore +
//!   handoff in one call (benchmarks and tests).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smart_proto::workload::{
    self, CheckpointHeader, Done, DrainReport, HandoffReport, RestoreReport, Usage, WorkloadClient,
    WorkloadError, WorkloadRequest,
};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use crate::distributor::{Distributor, Snapshot};
use crate::http::Url;

pub use smart_proto::workload::ENV_SOCKET;

/// How long one control call of [`restore`]/[`migrate`] may take (a 144 MB checkpoint over
/// a Unix socket takes well under a second; the bound only catches a wedged peer).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Result of [`migrate`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MigrationReport {
    /// The pre-copy.
    pub restore: RestoreReport,
    /// The cut-over.
    pub handoff: HandoffReport,
    /// Both, wall clock.
    pub total_ms: f64,
}

/// Serves the control API for `dist` on `listener`. `stopped` is notified after a `stop`.
pub async fn serve(dist: Arc<Distributor>, listener: UnixListener, stopped: Arc<Notify>) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let (d, st) = (dist.clone(), stopped.clone());
                tokio::spawn(async move {
                    if let Err(e) = connection(d, s, st).await {
                        tracing::debug!(cause = %e, "control connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(cause = %e, "control accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The distributor's `usage` answer.
fn usage(d: &Distributor) -> Usage {
    let (cache_hits, cache_misses, evictions, _) = d.cache_counters();
    let st = &d.stats;
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let (hls, hs) = (d.hls_sessions(), d.hls_stats());
    let progressive = ld(&st.viewers_active);
    Usage {
        bytes_sent: ld(&st.bytes_sent),
        bytes_received: ld(&st.bytes_received),
        clients: (progressive + hls).min(u32::MAX as u64) as u32,
        progressive_clients: progressive,
        hls_sessions: hls,
        hls_sessions_total: ld(&hs.sessions_total),
        hls_sessions_expired: ld(&hs.expired),
        hls_playlists: ld(&hs.playlists),
        hls_segments: ld(&hs.segments),
        hls_segment_bytes: ld(&hs.segment_bytes),
        hls_delayed: ld(&hs.delayed),
        restored_bytes: ld(&st.restored_bytes),
        origin_refetched_bytes: ld(&st.refetched_bytes),
        cache_bytes: d.cache_bytes(),
        origin_streams: ld(&st.origin_streams),
        viewers_total: ld(&st.viewers_total),
        cache_hits,
        cache_misses,
        evictions,
        errors: ld(&st.errors),
        redirects: ld(&st.redirects),
        write_errors: ld(&st.write_errors),
        write_timeouts: ld(&st.write_timeouts),
        head_timeouts: ld(&st.head_timeouts),
        over_capacity: ld(&d.limit.refused),
        max_connections: d.limit.max() as u64,
        mode: format!("{:?}", d.mode()),
    }
}

async fn connection(
    d: Arc<Distributor>,
    s: UnixStream,
    stopped: Arc<Notify>,
) -> Result<(), WorkloadError> {
    let (rd, mut wr) = s.into_split();
    let mut rd = BufReader::new(rd);
    while let Some(line) = workload::read_line(&mut rd).await? {
        let req = match workload::parse_request(&line) {
            Ok(r) => r,
            Err(e) => {
                wr.write_all(workload::error_line(&e).as_bytes()).await?;
                continue;
            }
        };
        tracing::debug!(?req, "control request");
        let reply = match req {
            WorkloadRequest::Usage => workload::ok_line(&usage(&d)),
            WorkloadRequest::Checkpoint => {
                let snap = d.checkpoint();
                let header = CheckpointHeader {
                    ok: true,
                    format: workload::CHECKPOINT_FORMAT,
                    videos: snap.videos,
                    blocks: snap
                        .blocks
                        .iter()
                        .map(|(v, b, bs, data)| (*v, *b, *bs, data.len() as u64))
                        .collect(),
                    viewers: snap.viewers,
                    data_len: snap.blocks.iter().map(|x| x.3.len() as u64).sum(),
                    hls: serde_json::to_value(&snap.hls).ok(),
                };
                wr.write_all(workload::ok_line(&header).as_bytes()).await?;
                for (_, _, _, data) in &snap.blocks {
                    wr.write_all(data).await?;
                }
                continue;
            }
            WorkloadRequest::Restore { from, rate_bps } => {
                match restore(&d, Path::new(&from), rate_bps).await {
                    Ok(r) => workload::ok_line(&r),
                    Err(e) => workload::error_line(&e.to_string()),
                }
            }
            WorkloadRequest::Handoff { to } => match Url::parse(&to) {
                Ok(to) => {
                    let t = Instant::now();
                    let hls_sessions = d.hls_sessions();
                    let viewers = d.handoff(to, Duration::from_secs(5)).await;
                    workload::ok_line(&HandoffReport {
                        viewers,
                        hls_sessions,
                        ms: t.elapsed().as_secs_f64() * 1000.0,
                    })
                }
                Err(e) => workload::error_line(&e),
            },
            WorkloadRequest::Drain => {
                d.drain();
                let progressive = d
                    .stats
                    .viewers_active
                    .load(std::sync::atomic::Ordering::Relaxed);
                workload::ok_line(&DrainReport {
                    clients: progressive + d.hls_sessions(),
                })
            }
            WorkloadRequest::Resume => {
                d.resume();
                workload::ok_line(&Done {})
            }
            WorkloadRequest::Stop => {
                d.stop();
                wr.write_all(workload::ok_line(&Done {}).as_bytes()).await?;
                stopped.notify_waiters();
                return Ok(());
            }
        };
        wr.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}

/// Pre-copy: loads the checkpoint of the instance listening at `source` into `d`, reading
/// at most at `rate_bps`.
pub async fn restore(
    d: &Arc<Distributor>,
    source: &Path,
    rate_bps: Option<u64>,
) -> Result<RestoreReport, WorkloadError> {
    let t = Instant::now();
    let mut c = WorkloadClient::connect(source, CALL_TIMEOUT).await?;
    let cp = c.checkpoint(rate_bps).await?;
    let snap = Snapshot {
        videos: cp.header.videos,
        blocks: cp
            .header
            .blocks
            .iter()
            .zip(cp.data)
            .map(|(&(v, b, bs, _), data)| (v, b, bs, data))
            .collect(),
        viewers: cp.header.viewers,
        hls: cp
            .header
            .hls
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default(),
    };
    let (videos, blocks) = (snap.videos.len() as u64, snap.blocks.len() as u64);
    let bytes = d.restore(snap);
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(videos, blocks, bytes, ms, "restored from checkpoint");
    Ok(RestoreReport {
        videos,
        blocks,
        bytes,
        ms,
    })
}

/// Live migration at workload level: the target (started empty) restores from the source
/// while the source serves, then the source hands its viewers to `target_url`.
pub async fn migrate(
    source: &Path,
    target: &Path,
    target_url: &str,
) -> Result<MigrationReport, WorkloadError> {
    let t = Instant::now();
    let restore = WorkloadClient::connect(target, CALL_TIMEOUT)
        .await?
        .restore(&source.to_string_lossy(), None)
        .await?;
    let handoff = WorkloadClient::connect(source, CALL_TIMEOUT)
        .await?
        .handoff(target_url)
        .await?;
    Ok(MigrationReport {
        restore,
        handoff,
        total_ms: t.elapsed().as_secs_f64() * 1000.0,
    })
}
