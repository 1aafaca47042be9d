//! Real H.264 + AAC video (made with ffmpeg): its timing as the origin states it, HLS
//! segments that each decode on their own, and unmodified ffmpeg playing the HLS stream in
//! real time through a live migration. Skipped when ffmpeg is missing, unless
//! `SMART_REQUIRE_TOOLS=1`.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smart_vod::distributor::{Distributor, DistributorConfig, bind};
use smart_vod::hls::MediaPlaylist;
use smart_vod::http::{self, Url};
use smart_vod::origin::{Origin, Video};
use smart_vod::realvideo::RealVideo;
use smart_vod::tools;
use smart_vod::workload;
use tokio::io::AsyncBufReadExt;

fn make(ffmpeg: &Path, dir: &Path, kbps: u64, secs: u64) -> (PathBuf, Video) {
    let path = dir.join(format!("r{kbps}.ts"));
    let v = RealVideo {
        preset: "ultrafast".into(),
        ..RealVideo::new(kbps, Duration::from_secs(secs))
    };
    let made = v.make(ffmpeg, &path).unwrap();
    assert_eq!(made.bitrate_bps.div_ceil(1000), kbps, "{made:?}");
    (path.clone(), Video::from_file(&path, None).unwrap())
}

async fn serve_origin(video: Video) -> Url {
    let mut o = Origin::new();
    o.add("v.ts", video);
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
    tokio::spawn(Arc::new(o).serve(l));
    url
}

async fn serve_distributor(
    origin: &Url,
    dir: &Path,
    name: &str,
) -> (Arc<Distributor>, Url, PathBuf) {
    let d = Distributor::new(DistributorConfig::new(origin.clone()));
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = Url::parse(&format!("http://{}/", l.local_addr().unwrap())).unwrap();
    tokio::spawn(d.clone().serve(l));
    let sock = dir.join(name);
    let cl = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(workload::serve(
        d.clone(),
        cl,
        Arc::new(tokio::sync::Notify::new()),
    ));
    (d, url, sock)
}

async fn get_body(url: &Url) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let r = http::get(url, None, Duration::from_secs(5)).await.unwrap();
    let (s, h) = (r.status, r.headers.clone());
    (
        s,
        h,
        r.body(64 << 20, Duration::from_secs(10)).await.unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_video_has_true_timing_and_self_contained_keyframe_segments() {
    let Some(ffmpeg) = tools::require_bin("ffmpeg") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, video) = make(&ffmpeg, dir.path(), 800, 12);
    let data = video.data.clone();
    let origin = serve_origin(video).await;
    // The origin states the media duration and the PCR rate, not size / rate.
    let h = http::head(&origin.with_path("/v.ts"), Duration::from_secs(5))
        .await
        .unwrap();
    let dur = h.header_u64("x-duration-ms").unwrap();
    assert!(dur.abs_diff(12_000) <= 40, "X-Duration-Ms {dur}");
    let rate = h.header_u64("x-bitrate").unwrap();
    assert!(rate.abs_diff(800_000) <= 8_000, "X-Bitrate {rate}");
    let (d, url, _) = serve_distributor(&origin, dir.path(), "d.sock").await;
    let base = url.with_path("/v.ts.m3u8");
    let (status, _, body) = get_body(&base).await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("#EXT-X-INDEPENDENT-SEGMENTS"), "{text}");
    let p = MediaPlaylist::parse(&text).unwrap();
    // Keyframes every 2 s: six segments of one GOP each.
    assert_eq!(p.segments.len(), 6, "{text}");
    for (dur, _) in &p.segments {
        assert!((dur - 2.0).abs() <= 0.05, "segment of {dur} s: {text}");
    }
    let mut all = Vec::new();
    for (n, (_, uri)) in p.segments.iter().enumerate() {
        let (status, _, seg) = get_body(&base.join(uri).unwrap()).await;
        assert_eq!(status, 200);
        assert_eq!(seg[0], 0x47);
        let pid = (((seg[1] & 0x1F) as u16) << 8) | seg[2] as u16;
        assert!(
            pid == 0 || pid == 0x11,
            "segment {n} starts with the tables (SDT/PAT), not PID {pid:#x}"
        );
        // Each segment alone decodes without a single error (tables + keyframe first).
        let f = dir.path().join(format!("seg{n}.ts"));
        std::fs::write(&f, &seg).unwrap();
        let out = std::process::Command::new(&ffmpeg)
            .args(["-hide_banner", "-nostdin", "-v", "error", "-xerror", "-i"])
            .arg(&f)
            .args(["-f", "null", "-"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "segment {n}: {err}"
        );
        all.extend_from_slice(&seg);
    }
    assert_eq!(&all[..], &data[..], "segments are the file, byte for byte");
    assert_eq!(d.hls_sessions(), 1);
}

/// One `-progress` sample: wall time since ffmpeg started, media time played.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: f64,
    media: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_hls_in_real_time_through_a_migration() {
    let Some(ffmpeg) = tools::require_bin("ffmpeg") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, video) = make(&ffmpeg, dir.path(), 400, 16);
    let origin = serve_origin(video).await;
    let (a, url_a, sa) = serve_distributor(&origin, dir.path(), "a.sock").await;
    let (b, url_b, sb) = serve_distributor(&origin, dir.path(), "b.sock").await;
    // Unmodified ffmpeg as a player: real-time input (-re), any decode error fatal.
    let mut child = tokio::process::Command::new(&ffmpeg)
        .args([
            "-hide_banner",
            "-nostdin",
            "-v",
            "error",
            "-xerror",
            "-re",
            "-i",
        ])
        .arg(url_a.with_path("/v.ts.m3u8").to_string())
        .args([
            "-f",
            "null",
            "-",
            "-progress",
            "pipe:1",
            "-stats_period",
            "0.25",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(us) = l
                .strip_prefix("out_time_us=")
                .and_then(|v| v.parse::<i64>().ok())
            {
                samples.push(Sample {
                    wall: t0.elapsed().as_secs_f64(),
                    media: us.max(0) as f64 / 1e6,
                });
            }
        }
        samples
    });
    tokio::time::sleep(Duration::from_secs(6)).await;
    let report = workload::migrate(&sa, &sb, &url_b.to_string())
        .await
        .unwrap();
    assert_eq!(report.handoff.hls_sessions, 1, "ffmpeg's session was on A");
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .expect("ffmpeg finished")
        .unwrap();
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut err)
        .await
        .unwrap();
    let samples = sampler.await.unwrap();
    assert!(status.success(), "ffmpeg failed: {err}");
    // ffmpeg's HLS reader keeps its HTTP connection for the next segment; after the 307 to
    // B it says at error level that it cannot reuse it for another host, and opens a new
    // one. That is its normal path across a redirect, not a playback error.
    let complaints: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("Cannot reuse HTTP connection for different host"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(complaints.is_empty(), "ffmpeg complained: {err}");
    let first = *samples.iter().find(|s| s.media > 0.0).expect("progress");
    let last = *samples.last().unwrap();
    assert!(last.media >= 15.5, "played {:.1} s of 16", last.media);
    // Media time keeps up with wall time: the lag never grows by more than 3 s.
    let worst = samples
        .iter()
        .filter(|s| s.wall >= first.wall)
        .map(|s| (s.wall - first.wall) - (s.media - first.media))
        .fold(f64::MIN, f64::max);
    println!(
        "ffmpeg: {} samples, media {:.2} s in {:.2} s wall, worst lag {worst:.2} s",
        samples.len(),
        last.media,
        last.wall
    );
    assert!(worst <= 3.0, "media fell {worst:.2} s behind wall time");
    let seg_b = b
        .hls_stats()
        .segments
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        seg_b > 0,
        "ffmpeg fetched segments from B after the handoff"
    );
    assert!(
        a.stats.redirects.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "through A's 307"
    );
}
