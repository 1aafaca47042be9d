//! A real player: ffmpeg reads from the distributor and decodes with `-xerror`, once plainly
//! and once across a handoff (ffmpeg follows the old distributor's 307 and resumes by Range).
//! Skipped, with a printed line, when ffmpeg is not installed (fails instead with
//! `SMART_REQUIRE_TOOLS=1`, as CI runs).

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use smart_vod::distributor::{Distributor, DistributorConfig, bind};
use smart_vod::http::Url;
use smart_vod::origin::{Origin, Video};
use smart_vod::ts::VideoParams;
use smart_vod::workload;

fn ffmpeg() -> Option<std::path::PathBuf> {
    smart_vod::tools::require_bin("ffmpeg")
}

async fn setup(duration_ms: u64) -> (Url, Vec<Arc<Distributor>>, Vec<Url>) {
    let mut o = Origin::new();
    o.add(
        "v.ts",
        Video::generated(VideoParams {
            bitrate_bps: 400_000,
            duration_ms,
        })
        .unwrap(),
    );
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let origin_url = Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
    tokio::spawn(Arc::new(o).serve(l));
    let mut ds = vec![];
    let mut urls = vec![];
    for _ in 0..2 {
        let mut cfg = DistributorConfig::new(origin_url.clone());
        cfg.prefetch_ms = 1000;
        let d = Distributor::new(cfg);
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        urls.push(Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap());
        tokio::spawn(d.clone().serve(l));
        ds.push(d);
    }
    (origin_url, ds, urls)
}

async fn run_ffmpeg(bin: &std::path::Path, url: &str, reconnect: bool) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["-hide_banner", "-nostdin", "-v", "error", "-xerror"]);
    if reconnect {
        cmd.args([
            "-reconnect",
            "1",
            "-reconnect_streamed",
            "1",
            "-reconnect_delay_max",
            "1",
        ]);
    }
    cmd.args(["-i", url, "-f", "null", "-"]);
    cmd.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("ffmpeg timed out")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_decodes_distributor_stream_without_errors() {
    let Some(bin) = ffmpeg() else { return };
    let (_, ds, urls) = setup(3_000).await;
    let out = run_ffmpeg(&bin, &format!("http://{}/v.ts", urls[0].authority()), false).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ffmpeg failed: {err}");
    assert!(err.trim().is_empty(), "ffmpeg complained: {err}");
    // ffmpeg probes the end of a seekable input too, so only check it read the whole file.
    let size = VideoParams {
        bitrate_bps: 400_000,
        duration_ms: 3_000,
    }
    .size();
    assert!(ds[0].stats.bytes_sent.load(Ordering::Relaxed) >= size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_decodes_across_a_handoff_with_range_resume() {
    let Some(bin) = ffmpeg() else { return };
    let (_, ds, urls) = setup(5_000).await;
    let dir = tempfile::tempdir().unwrap();
    let mut socks = vec![];
    for (i, d) in ds.iter().enumerate() {
        let p = dir.path().join(format!("{i}.sock"));
        let l = tokio::net::UnixListener::bind(&p).unwrap();
        tokio::spawn(workload::serve(
            d.clone(),
            l,
            Arc::new(tokio::sync::Notify::new()),
        ));
        socks.push(p);
    }
    let player = {
        let (bin, url) = (bin.clone(), format!("http://{}/v.ts", urls[0].authority()));
        tokio::spawn(async move { run_ffmpeg(&bin, &url, true).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = workload::migrate(
        &socks[0],
        &socks[1],
        &format!("http://{}", urls[1].authority()),
    )
    .await
    .unwrap();
    assert_eq!(report.handoff.viewers, 1, "ffmpeg was connected to A");
    let out = player.await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("ffmpeg stderr: {err}");
    assert!(out.status.success(), "ffmpeg failed: {err}");
    for bad in [
        "corrupt",
        "rror while decoding",
        "discontinuity",
        "Invalid data",
    ] {
        assert!(!err.contains(bad), "ffmpeg saw {bad}: {err}");
    }
    assert!(
        ds[1].stats.viewers_total.load(Ordering::Relaxed) >= 1,
        "ffmpeg resumed at B"
    );
    assert!(ds[1].stats.bytes_sent.load(Ordering::Relaxed) > 0);
    assert!(
        ds[0].stats.redirects.load(Ordering::Relaxed) >= 1,
        "via A's 307"
    );
}
