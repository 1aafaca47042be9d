//! `vod bench hls`: what an HLS viewer costs the distributor against a progressive viewer,
//! same distributor process, same video, same load generator process, one run: first N
//! progressive viewers (paced streams), then N HLS viewers (playlist, then 2 s segments as a
//! player with a `buffer` goal fetches them). CPU of the distributor is read from `/proc`
//! over each phase's steady state (after its ramp and the viewers' initial buffering) and
//! over the whole phase.
//!
//! ## Layout
//! - [`HlsBenchArgs`], [`hls`]; `phase`: one measured load.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bench::{BenchError, cpu_seconds, rss_mb, spawn_distributor, start_origin};
use crate::hls_viewer::{self, HlsLoadConfig, HlsViewerConfig};
use crate::http::Url;
use crate::origin::Video;
use crate::ts::VideoParams;
use crate::viewer::{self, LoadConfig, Shared, ViewerConfig, ViewerReport};
use smart_proto::workload::{WorkloadClient, WorkloadRequest};

/// Settings of `vod bench hls`.
#[derive(Debug, Clone)]
pub struct HlsBenchArgs {
    /// Viewers of each kind.
    pub clients: usize,
    /// Video bitrate.
    pub bitrate_bps: u64,
    /// Measured steady state of each phase.
    pub duration: Duration,
    /// Ramp of each phase.
    pub ramp: Duration,
    /// Media an HLS viewer keeps buffered.
    pub buffer: Duration,
    /// The `vod` executable (to start the distributor).
    pub exe: PathBuf,
}

/// One phase: runs `load` while sampling the distributor's CPU.
async fn phase<F>(
    pid: u32,
    control: &std::path::Path,
    settle: Duration,
    steady: Duration,
    load: F,
) -> Result<Value, BenchError>
where
    F: Future<Output = (Vec<ViewerReport>, Arc<Shared>)> + Send + 'static,
{
    let (c0, t0) = (cpu_seconds(pid).unwrap_or(0.0), Instant::now());
    let run = tokio::spawn(load);
    tokio::time::sleep(settle).await;
    let (c1, t1) = (cpu_seconds(pid).unwrap_or(0.0), Instant::now());
    tokio::time::sleep(steady).await;
    let (c2, t2) = (cpu_seconds(pid).unwrap_or(0.0), Instant::now());
    let usage: Value = WorkloadClient::connect(control, Duration::from_secs(5))
        .await?
        .call(&WorkloadRequest::Usage)
        .await?;
    let rss = rss_mb(pid);
    let (reports, shared) = run
        .await
        .map_err(|e| BenchError::Setup(format!("load task: {e}")))?;
    let (c3, t3) = (cpu_seconds(pid).unwrap_or(0.0), Instant::now());
    let n = reports.len().max(1) as f64;
    let steady_s = t2.duration_since(t1).as_secs_f64();
    let whole_s = t3.duration_since(t0).as_secs_f64();
    let mut v = serde_json::to_value(viewer::summarize(&reports, &shared)).unwrap_or(Value::Null);
    v["cpu_us_per_viewer_s"] = json!((c2 - c1) / steady_s / n * 1e6);
    v["cpu_pct_steady"] = json!((c2 - c1) / steady_s * 100.0);
    v["cpu_us_per_viewer_s_whole_phase"] = json!((c3 - c0) / whole_s / n * 1e6);
    v["steady_s"] = json!(steady_s);
    v["distributor_rss_mb"] = json!(rss);
    v["clients_reported"] = usage["clients"].clone();
    v["usage_at_end_of_steady_state"] = usage;
    Ok(v)
}

/// `vod bench hls`: one JSON object with both phases and the ratio.
pub async fn hls(a: HlsBenchArgs) -> Result<Value, BenchError> {
    let dir = tempfile::tempdir()?;
    // Long enough for both phases; a 20 % window spans the viewers' spread (as `streams`).
    let video_ms = (((a.ramp + a.duration).as_millis() as u64) * 2 + 120_000).max(1_200_000);
    let video = Video::generated(VideoParams {
        bitrate_bps: a.bitrate_bps,
        duration_ms: video_ms,
    })
    .map_err(|e| BenchError::Setup(format!("generate: {e}")))?;
    let (_origin, origin_url) = start_origin("v.ts", video).await?;
    let d = spawn_distributor(&a.exe, &origin_url, dir.path().join("d.sock"), &[]).await?;
    let base = Url::parse(&d.url).map_err(BenchError::Setup)?;
    // Viewers settle after the ramp plus their start-up (progressive: 2 s prefetch; HLS: the
    // buffer goal fetched at up to the allowance).
    let settle = a.ramp + Duration::from_secs(3) + a.buffer;
    let run_for = settle + a.duration + Duration::from_secs(1);

    let prog_cfg = LoadConfig {
        viewer: ViewerConfig {
            url: base.with_path("/v.ts"),
            frontend: None,
            bitrate_bps: a.bitrate_bps,
            prefetch_bytes: a.bitrate_bps / 8 * 2,
            start_buffer: Duration::from_millis(1000),
            start_offset: 0,
        },
        clients: a.clients,
        ramp: a.ramp,
        duration: run_for,
    };
    let progressive = phase(d.pid, &d.control, settle, a.duration, async move {
        let shared = Arc::new(Shared::default());
        (viewer::run_load(&prog_cfg, shared.clone()).await, shared)
    })
    .await?;
    // Let the progressive connections close before the HLS phase starts.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let hls_cfg = HlsLoadConfig {
        viewer: HlsViewerConfig {
            url: base.with_path("/v.ts.m3u8"),
            frontend: None,
            start_buffer: Duration::from_millis(2000),
            buffer_goal: a.buffer,
        },
        clients: a.clients,
        ramp: a.ramp,
        duration: run_for,
    };
    let hls = phase(d.pid, &d.control, settle, a.duration, async move {
        let shared = Arc::new(Shared::default());
        (
            hls_viewer::run_hls_load(&hls_cfg, shared.clone()).await,
            shared,
        )
    })
    .await?;
    d.stop().await;
    let ratio = match (
        hls["cpu_us_per_viewer_s"].as_f64(),
        progressive["cpu_us_per_viewer_s"].as_f64(),
    ) {
        (Some(h), Some(p)) if p > 0.0 => json!(h / p),
        _ => Value::Null,
    };
    Ok(json!({
        "clients": a.clients,
        "bitrate_bps": a.bitrate_bps,
        "hls_buffer_s": a.buffer.as_secs_f64(),
        "progressive": progressive,
        "hls": hls,
        "hls_over_progressive_cpu": ratio,
    }))
}
