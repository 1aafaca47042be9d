//! Real players through SMART's front-end across node death and migration (HLS and
//! progressive), with
//! real `smart node` processes on loopback: unmodified ffmpeg playing HLS
//! (`/watch/{video}.m3u8`) and progressive (`/watch/{video}` with its standard reconnect
//! options) while the node serving the video is killed with `kill -9` or drained, headless
//! Chromium playing the front-end's player page across a drain, HLS under admission
//! (byte-exact segments, `503` + `Retry-After` when refused, sessions released when they stop
//! fetching), and the figure for a dead node's HLS viewers.
//!
//! The last node is the front-end and runs no services (no agent role), so a kill never
//! takes the viewers' entry point. Tests needing ffmpeg, chromium, node or the npm packages
//! print `skipped: ...` without them, and fail instead with `SMART_REQUIRE_TOOLS=1` (CI).
//! The nextest config runs this binary serially (group `cluster-processes`).

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use smart_api::{NodeId, Request, Response, ServiceStatus};
use smart_bench::cluster::{ClusterSpec, LocalCluster};
use smart_bench::videos;
use smart_testkit::cluster::{frontend_spec, node_counter};
use smart_testkit::p99;
use smart_vod::hls::MediaPlaylist;
use smart_vod::hls_viewer::{HlsViewerConfig, run_hls_viewer};
use smart_vod::http::{self, Url};
use smart_vod::origin::Video;
use smart_vod::tools;
use smart_vod::ts::VideoParams;
use smart_vod::viewer::Shared;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

const KBPS: u64 = 400;
/// Length of the real video the ffmpeg tests play to its end.
const REAL_SECS: u64 = 24;

fn spec(nodes: usize, origin: &str, frontend_toml: &str) -> ClusterSpec {
    let mut s = frontend_spec(env!("CARGO_BIN_EXE_smart"), nodes, origin, KBPS * 1000);
    s.frontend_toml = frontend_toml.to_string();
    s
}

/// A cluster of `nodes` (the last the front-end) on `origin`, its Control agreed; the
/// front-end's URL.
async fn cluster(s: ClusterSpec) -> (LocalCluster, String) {
    let c = LocalCluster::start(s).unwrap();
    let all = c.running();
    c.wait_agreed_control(&all, Duration::from_secs(15), |_, _| true)
        .await
        .unwrap();
    let fe = c.frontend_url(c.nodes.len() as u64).unwrap();
    (c, fe)
}

fn fe_node(c: &LocalCluster) -> u64 {
    c.nodes.len() as u64
}

async fn services(c: &LocalCluster) -> Vec<ServiceStatus> {
    let cl = c
        .client(fe_node(c))
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    match cl.request(Request::Services).await {
        Ok(Response::Services(s)) => s,
        other => panic!("services: {other:?}"),
    }
}

/// The node running `video-{video}`, once it runs.
async fn placed_on(c: &LocalCluster, video: &str) -> NodeId {
    let name = format!("video-{video}");
    for _ in 0..200 {
        if let Some(s) = services(c)
            .await
            .iter()
            .find(|s| s.placement.service == name)
        {
            return s.placement.node;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never placed\n{}", c.log_tail(1, 40));
}

/// Waits until `video-{video}` runs on a node other than `not`.
async fn moved_off(c: &LocalCluster, video: &str, not: NodeId) -> NodeId {
    let name = format!("video-{video}");
    for _ in 0..300 {
        if let Some(s) = services(c)
            .await
            .iter()
            .find(|s| s.placement.service == name && s.placement.node != not)
        {
            return s.placement.node;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never left {not}");
}

/// What happens to the serving node mid-play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disruption {
    Kill,
    Drain,
}

async fn disrupt(c: &mut LocalCluster, video: &str, how: Disruption) -> (NodeId, NodeId) {
    let node = placed_on(c, video).await;
    match how {
        Disruption::Kill => c.kill(node.0).unwrap(),
        Disruption::Drain => {
            let cl = c
                .client(fe_node(c))
                .await
                .unwrap()
                .with_timeout(Duration::from_secs(30));
            assert_eq!(
                cl.request(Request::Drain { node }).await.unwrap(),
                Response::Ok
            );
        }
    }
    let to = moved_off(c, video, node).await;
    (node, to)
}

/// One `-progress` sample of ffmpeg: wall time since it started, media time, frames.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    wall: f64,
    media: f64,
    frames: u64,
}

/// ffmpeg playing `url` in real time (`-re`), any decode error fatal (`-xerror`).
struct Ffmpeg {
    child: tokio::process::Child,
    samples: Arc<Mutex<Vec<Sample>>>,
    sampler: tokio::task::JoinHandle<()>,
}

impl Ffmpeg {
    fn start(ffmpeg: &std::path::Path, input_opts: &[&str], url: &str) -> Self {
        let mut child = tokio::process::Command::new(ffmpeg)
            .args(["-hide_banner", "-nostdin", "-v", "error", "-xerror", "-re"])
            .args(input_opts)
            .args(["-i", url])
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
        let samples = Arc::new(Mutex::new(Vec::new()));
        let out = samples.clone();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let sampler = tokio::spawn(async move {
            let mut frames = 0;
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(n) = l.strip_prefix("frame=").and_then(|v| v.trim().parse().ok()) {
                    frames = n;
                }
                if let Some(us) = l
                    .strip_prefix("out_time_us=")
                    .and_then(|v| v.trim().parse::<i64>().ok())
                {
                    out.lock().unwrap().push(Sample {
                        wall: t0.elapsed().as_secs_f64(),
                        media: us.max(0) as f64 / 1e6,
                        frames,
                    });
                }
            }
        });
        Self {
            child,
            samples,
            sampler,
        }
    }

    /// Waits until `secs` of media have played.
    async fn played(&self, secs: f64) {
        let t = Instant::now();
        loop {
            if self
                .samples
                .lock()
                .unwrap()
                .last()
                .is_some_and(|s| s.media >= secs)
            {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "ffmpeg did not start playing"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the end; `(success, stderr, samples)`.
    async fn finish(mut self, within: Duration) -> (bool, String, Vec<Sample>) {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .expect("ffmpeg finished in time")
            .unwrap();
        let mut err = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut self.child.stderr.take().unwrap(), &mut err)
            .await
            .unwrap();
        let _ = self.sampler.await;
        let s = self.samples.lock().unwrap().clone();
        (status.success(), err, s)
    }
}

/// How far media time fell behind wall time, at worst, from the first sample that played.
fn worst_lag(samples: &[Sample]) -> f64 {
    smart_testkit::worst_lag(samples.iter().map(|s| (s.wall, s.media)))
}

/// Asserts an ffmpeg run played the whole real video cleanly and in real time.
fn assert_played(what: &str, ok: bool, err: &str, samples: &[Sample]) {
    assert!(ok, "{what}: ffmpeg failed: {err}");
    assert!(err.trim().is_empty(), "{what}: ffmpeg complained: {err}");
    let last = *samples.last().expect("progress samples");
    let lag = worst_lag(samples);
    println!(
        "{what}: {} frames, media {:.2} s in {:.2} s wall, worst lag {lag:.2} s",
        last.frames, last.media, last.wall
    );
    assert!(
        last.media >= REAL_SECS as f64 - 0.5,
        "{what}: played {:.1} s of {REAL_SECS}",
        last.media
    );
    // 25 frames per second: a skipped 2 s segment would be 50 frames short.
    let want = REAL_SECS * 25;
    assert!(
        last.frames + 5 >= want,
        "{what}: decoded {} frames of {want}: media was skipped",
        last.frames
    );
    assert!(lag <= 3.0, "{what}: media fell {lag:.2} s behind wall time");
}

/// The real video (made once with ffmpeg, cached) served as `v0`.
async fn real_origin(ffmpeg: &std::path::Path, secs: u64) -> String {
    let v = tokio::task::spawn_blocking({
        let ffmpeg = ffmpeg.to_path_buf();
        move || videos::real_video(&ffmpeg, Duration::from_secs(secs), KBPS)
    })
    .await
    .unwrap()
    .unwrap();
    videos::serve_origin(vec![("v0".into(), v)]).await.unwrap()
}

async fn ffmpeg_hls_across(how: Disruption) {
    let Some(ffmpeg) = tools::require_bin("ffmpeg") else {
        return;
    };
    let origin = real_origin(&ffmpeg, REAL_SECS).await;
    let (mut c, fe) = cluster(spec(4, &origin, "")).await;
    let player = Ffmpeg::start(&ffmpeg, &[], &format!("{fe}/watch/v0.m3u8"));
    player.played(6.0).await;
    let (from, to) = disrupt(&mut c, "v0", how).await;
    let (ok, err, samples) = player.finish(Duration::from_secs(REAL_SECS + 30)).await;
    assert_played(
        &format!("HLS across a {how:?} of {from} (now on {to})"),
        ok,
        &err,
        &samples,
    );
    let resumes = node_counter(&c, fe_node(&c), "frontend_relay_resumes").await;
    let retries = node_counter(&c, fe_node(&c), "frontend_relay_retries").await;
    println!("front-end relay: {resumes} resumes mid-body, {retries} retried attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_hls_through_the_front_end_across_a_kill_9_of_its_node() {
    ffmpeg_hls_across(Disruption::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_hls_through_the_front_end_across_a_drain_of_its_node() {
    ffmpeg_hls_across(Disruption::Drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_progressive_in_the_default_configuration_across_a_kill_9() {
    let Some(ffmpeg) = tools::require_bin("ffmpeg") else {
        return;
    };
    let origin = real_origin(&ffmpeg, REAL_SECS).await;
    // The shipped configuration (the front-end relays) and an unmodified player: no
    // reconnect options, so only one unbroken response keeps it playing.
    let (mut c, fe) = cluster(spec(4, &origin, "")).await;
    let player = Ffmpeg::start(&ffmpeg, &[], &format!("{fe}/watch/v0"));
    // Beside it, viewers that check every byte (TS continuity, Content-Range) and count
    // their reconnects.
    let (stop, rx) = watch::channel(false);
    let shared = Arc::new(Shared::default());
    let checkers: Vec<_> = (0..5)
        .map(|_| {
            let url = Url::parse(&format!("{fe}/watch/v0")).unwrap();
            let cfg = smart_vod::viewer::ViewerConfig {
                url: url.clone(),
                frontend: Some(url),
                bitrate_bps: KBPS * 1000,
                prefetch_bytes: 0,
                start_buffer: Duration::from_millis(500),
                start_offset: 0,
            };
            let (shared, rx) = (shared.clone(), rx.clone());
            tokio::spawn(async move { smart_vod::viewer::run_viewer(&cfg, &shared, rx).await })
        })
        .collect();
    player.played(6.0).await;
    let (from, to) = disrupt(&mut c, "v0", Disruption::Kill).await;
    let (ok, err, samples) = player.finish(Duration::from_secs(REAL_SECS + 30)).await;
    let _ = stop.send(true);
    for t in checkers {
        let r = t.await.unwrap();
        assert_eq!(r.integrity_errors, 0, "a byte lost or repeated: {r:?}");
        assert_eq!(r.reconnects, 0, "the relay hid the node's death: {r:?}");
        assert!(r.bytes > 0 && r.http_error.is_none(), "{r:?}");
    }
    assert_played(
        &format!("progressive (default: relay) across a kill -9 of {from} (now on {to})"),
        ok,
        &err,
        &samples,
    );
    let resumes = node_counter(&c, fe_node(&c), "frontend_relay_resumes").await;
    assert!(resumes >= 1, "the relay resumed the stream on {to}");
}

/// HLS under admission, without ffmpeg: segments through the front-end are the origin's
/// file byte for byte; hostile requests get 4xx; a refused admission is 503 + Retry-After
/// for playlists and segments alike; sessions that stop fetching are released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_through_the_front_end_is_byte_exact_admitted_and_released() {
    let video = Video::generated(VideoParams {
        bitrate_bps: KBPS * 1000,
        duration_ms: 20_000,
    })
    .unwrap();
    let data = video.data.clone();
    let origin = videos::serve_origin(vec![("v0".into(), video)])
        .await
        .unwrap();
    // Small NICs: admission refuses after a handful of viewers.
    let mut s = spec(3, &origin, "hls_session_timeout = \"3s\"");
    s.nic_bps = 8_000_000;
    let (c, fe) = cluster(s).await;
    let get = async |path: &str| {
        let r = http::get(
            &Url::parse(&format!("{fe}{path}")).unwrap(),
            None,
            Duration::from_secs(20),
        )
        .await
        .unwrap();
        let status = r.status;
        let headers = r.headers.clone();
        let body = r.body(64 << 20, Duration::from_secs(20)).await.unwrap();
        (status, headers, body)
    };
    let hdr =
        |h: &[(String, String)], k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());

    // One session: its playlist, then every segment, through the front-end.
    let (st, h, body) = get("/watch/v0.m3u8").await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let sid = hdr(&h, "x-session").expect("X-Session");
    let text = String::from_utf8(body).unwrap();
    let pl = MediaPlaylist::parse(&text).unwrap();
    assert!(pl.segments.len() >= 9, "{text}");
    let base = Url::parse(&format!("{fe}/watch/v0.m3u8")).unwrap();
    let mut all = Vec::new();
    for (n, (_, uri)) in pl.segments.iter().enumerate() {
        let u = base.join(uri).unwrap();
        assert!(
            u.to_string().starts_with(&fe),
            "segment {n} through the front-end: {u}"
        );
        assert!(uri.contains(&format!("s={sid}")), "{uri}");
        let r = http::get(&u, None, Duration::from_secs(20)).await.unwrap();
        assert_eq!(r.status, 200, "segment {n}");
        assert_eq!(
            r.header_u64("x-segment-offset"),
            Some(all.len() as u64),
            "segment {n}"
        );
        let seg = r.body(16 << 20, Duration::from_secs(20)).await.unwrap();
        all.extend_from_slice(&seg);
    }
    assert!(
        all == data[..],
        "segments are the origin's file, byte for byte"
    );
    let admitted = |s: &[ServiceStatus]| s.iter().map(|s| s.clients).sum::<u64>();
    assert_eq!(admitted(&services(&c).await), 1, "one session, one client");

    // Hostile or malformed requests: 4xx, and the front-end keeps serving.
    for (path, want) in [
        ("/watch/v0/seg/abc.ts?s=ab", 400),
        ("/watch/v0/seg/1.ts", 400),
        ("/watch/v0/seg/1.ts?s=%3Cscript%3E", 400),
        ("/watch/v0.m3u8?s=a/b", 400),
        (&format!("/watch/v0/seg/99999.ts?s={sid}"), 404),
        ("/watch/v0/seg/99999999999999999999999.ts?s=ab", 400),
        ("/watch/..%2f/seg/0.ts?s=ab", 404),
        ("/watch/a%20b.m3u8", 404),
        ("/play/..", 404),
        ("/nothing", 404),
    ] {
        let (st, _, _) = get(path).await;
        assert_eq!(st, want, "{path}");
    }

    // The player page and its JSON, as the data plane's contract decodes it.
    let (st, _, page) = get("/play/v0").await;
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&page).contains("window.smartPlayer"));
    let (st, _, js) = get("/play/hls.min.js").await;
    if smart_vod::player::asset("hls.min.js").is_some() {
        assert_eq!(st, 200);
        assert!(js.len() > 100_000, "hls.js");
    }
    let (st, _, w) = get("/watch/v0/where").await;
    assert_eq!(st, 200);
    let w: smart_vod::player::Where = serde_json::from_slice(&w).unwrap();
    let on = placed_on(&c, "v0").await;
    assert_eq!(w.node.as_deref(), Some(on.to_string().as_str()), "{w:?}");
    assert!(w.events.iter().any(|e| e.kind == "placed"), "{w:?}");

    // New sessions until admission says no: a playlist then gets 503 + Retry-After ...
    let mut refused = None;
    for _ in 0..60 {
        let (st, h, body) = get("/watch/v0.m3u8").await;
        if st == 503 {
            refused = Some((h, body));
            break;
        }
        assert_eq!(st, 200);
    }
    let (h, body) = refused.expect("admission refused a session");
    assert!(hdr(&h, "retry-after").is_some(), "{h:?}");
    println!(
        "refused after {} clients: {}",
        admitted(&services(&c).await),
        String::from_utf8_lossy(&body)
    );
    // ... and so does a segment of a session it never admitted.
    let (st, h, _) = get("/watch/v0/seg/0.ts?s=neveradmitted").await;
    assert_eq!(st, 503);
    assert!(hdr(&h, "retry-after").is_some(), "{h:?}");
    assert!(
        hdr(&h, "x-reason").is_some_and(|r| r.contains("admission")),
        "{h:?}"
    );
    // An admitted session keeps being served.
    let (st, _, _) = get(&format!("/watch/v0/seg/1.ts?s={sid}")).await;
    assert_eq!(st, 200);
    let (_, _, w) = get("/watch/v0/where").await;
    let w: smart_vod::player::Where = serde_json::from_slice(&w).unwrap();
    assert!(w.events.iter().any(|e| e.kind == "refused"), "{w:?}");

    // Sessions that stop fetching are released (3 s here), and new ones are admitted again.
    let mut released = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if admitted(&services(&c).await) == 0 {
            released = true;
            break;
        }
    }
    assert!(released, "clients still admitted: {:?}", services(&c).await);
    assert!(node_counter(&c, fe_node(&c), "frontend_hls_sessions_expired").await >= 2);
    let (st, _, _) = get("/watch/v0.m3u8").await;
    assert_eq!(st, 200, "admitted again after the releases");
}

/// `hls = "redirect"`: the playlist still comes from the front-end, and each segment is a
/// `302` (with the session, and CORS for the page) to the distributor that serves it now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_redirect_mode_sends_each_segment_to_the_current_distributor() {
    let video = Video::generated(VideoParams {
        bitrate_bps: KBPS * 1000,
        duration_ms: 10_000,
    })
    .unwrap();
    let data = video.data.clone();
    let origin = videos::serve_origin(vec![("v0".into(), video)])
        .await
        .unwrap();
    let (c, fe) = cluster(spec(3, &origin, "hls = \"redirect\"")).await;
    let pl_url = Url::parse(&format!("{fe}/watch/v0.m3u8")).unwrap();
    let r = http::get(&pl_url, None, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let sid = r.header("x-session").unwrap().to_string();
    let text = String::from_utf8(r.body(1 << 20, Duration::from_secs(5)).await.unwrap()).unwrap();
    let pl = MediaPlaylist::parse(&text).unwrap();
    let endpoint = services(&c).await[0].placement.endpoint.clone();
    let mut all = Vec::new();
    for (n, (_, uri)) in pl.segments.iter().enumerate() {
        let r = http::get(&pl_url.join(uri).unwrap(), None, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(r.status, 302, "segment {n}");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        let loc = r.header("location").unwrap().to_string();
        assert_eq!(loc, format!("{endpoint}v0/seg/{n}.ts?s={sid}"));
        let seg = http::get(&Url::parse(&loc).unwrap(), None, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(seg.status, 200);
        all.extend(seg.body(16 << 20, Duration::from_secs(20)).await.unwrap());
    }
    assert!(all == data[..], "the redirected segments are the file");
}

/// The figure: HLS load viewers through the front-end while the node serving their video
/// is killed. Each keeps 6-8 s buffered (8 s goal: it asks for a 2 s segment when below
/// it), so that the distributor's allowance (a 10 s burst, then 1.5× real time) never holds
/// a request back and a viewer's longest wait for a segment (the longest its media input
/// stood still while it wanted media) is what the kill cost it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_hls_viewers_keep_playing_through_the_front_end() {
    dead_node_hls("hls = \"relay\"").await;
}

/// The same with `hls = "redirect"` (the viewers retry a failed segment as hls.js does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_hls_viewers_with_redirects_per_segment() {
    dead_node_hls("hls = \"redirect\"").await;
}

async fn dead_node_hls(mode: &str) {
    const VIEWERS: usize = 60;
    let mut origin_videos = Vec::new();
    for v in 0..2 {
        let video = Video::generated(VideoParams {
            bitrate_bps: KBPS * 1000,
            duration_ms: 120_000,
        })
        .unwrap();
        origin_videos.push((format!("v{v}"), video));
    }
    let origin = videos::serve_origin(origin_videos).await.unwrap();
    let (mut c, fe) = cluster(spec(4, &origin, mode)).await;
    let (stop, rx) = watch::channel(false);
    let shared = Arc::new(Shared::default());
    let mut tasks = Vec::new();
    for i in 0..VIEWERS {
        let video = format!("v{}", i % 2);
        let url = Url::parse(&format!("{fe}/watch/{video}.m3u8")).unwrap();
        let cfg = HlsViewerConfig {
            url: url.clone(),
            frontend: Some(url),
            start_buffer: Duration::from_secs(2),
            buffer_goal: Duration::from_secs(8),
        };
        let (shared, rx) = (shared.clone(), rx.clone());
        let delay = Duration::from_millis(50 * i as u64);
        tasks.push((
            video,
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                run_hls_viewer(&cfg, &shared, rx).await
            }),
        ));
    }
    // Every viewer has its buffer before the kill (filled at link speed, then 1×).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = [placed_on(&c, "v0").await, placed_on(&c, "v1").await];
    let (victim, to) = disrupt(&mut c, "v0", Disruption::Kill).await;
    // The dead node's viewers: v0's, and v1's if it ran there too.
    let dead: Vec<String> = (0..2)
        .filter(|&i| before[i] == victim)
        .map(|i| format!("v{i}"))
        .collect();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let _ = stop.send(true);
    let mut waits = Vec::new();
    let mut worst = 0.0f64;
    for (video, t) in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.integrity_errors, 0, "{video}: {r:?}");
        assert!(r.http_error.is_none(), "{video}: {r:?}");
        assert_eq!(r.stalls, 0, "{video}: stalled with 6 s buffered: {r:?}");
        if dead.contains(&video) {
            waits.push(r.longest_wait_ms);
            worst = worst.max(r.longest_wait_ms);
        }
    }
    let p = p99(waits.clone());
    println!(
        "front-end relay: {} resumes mid-body, {} retried attempts",
        node_counter(&c, fe_node(&c), "frontend_relay_resumes").await,
        node_counter(&c, fe_node(&c), "frontend_relay_retries").await
    );
    println!(
        "{mode}: kill -9 of {victim} ({dead:?} ran there, v0 now on {to}, {:.1} s ago): {} HLS viewers through the front-end, longest wait for a segment p99 {p:.0} ms, max {worst:.0} ms, 0 stalls (load {})",
        killed_at.elapsed().as_secs_f64(),
        waits.len(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    assert!(p <= 3_000.0, "longest media gap p99 {p} ms");
}

/// Headless Chromium plays the front-end's player page for 20 s across a drain of the node
/// serving the video: `currentTime` keeps advancing, no error fires, the page shows the new
/// node and the migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_the_front_ends_page_across_a_drain() {
    use smart_vod::browser::Browser;
    let Some(ffmpeg) = tools::require_bin("ffmpeg") else {
        return;
    };
    let found = Browser::find().map_err(|e| e.to_string());
    let hint = found.as_ref().err().cloned().unwrap_or_default();
    let Some(browser_tools) = tools::require("a browser", found.ok(), &hint) else {
        return;
    };
    let origin = real_origin(&ffmpeg, 40).await;
    let (mut c, fe) = cluster(spec(3, &origin, "")).await;
    let mut br = Browser::launch(&browser_tools).await.unwrap();
    println!("chromium {}", br.version);
    // A 6 s buffer goal: after the drain the page must fetch from the new distributor.
    br.goto(&format!("{fe}/play/v0?buffer=6")).await.unwrap();
    let state = async |br: &mut Browser| -> Value {
        br.eval(
            "({...window.smartPlayer, currentTime: document.getElementById('video').currentTime})",
        )
        .await
        .unwrap()
    };
    let t_open = Instant::now();
    loop {
        let s = state(&mut br).await;
        if s["currentTime"].as_f64().unwrap_or(0.0) > 0.5 {
            break;
        }
        assert!(
            t_open.elapsed() < Duration::from_secs(30),
            "playback did not start: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first_node = state(&mut br).await["node"].clone();
    let t0 = Instant::now();
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let mut drained = None;
    while t0.elapsed() < Duration::from_secs(20) {
        let s = state(&mut br).await;
        samples.push((
            t0.elapsed().as_secs_f64(),
            s["currentTime"].as_f64().unwrap_or(-1.0),
        ));
        if drained.is_none() && t0.elapsed() >= Duration::from_secs(6) {
            drained = Some(disrupt(&mut c, "v0", Disruption::Drain).await);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The page polls `where` every second: give it one more poll.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = state(&mut br).await;
    br.close().await;
    let (from, to) = drained.unwrap();
    println!("drained {from}, now on {to}; page state: {s}");
    println!("samples (wall s, currentTime s): {samples:?}");
    for w in samples.windows(2) {
        assert!(w[1].1 >= w[0].1, "currentTime went back: {w:?}");
    }
    let mut still_since = samples[0];
    for &(t, ct) in &samples[1..] {
        if ct > still_since.1 {
            still_since = (t, ct);
        }
        assert!(
            t - still_since.0 <= 1.5,
            "playback stood still at {ct:.2} s from {:.1} s",
            still_since.0
        );
    }
    let (a, b) = (samples[0], *samples.last().unwrap());
    assert!(
        b.1 - a.1 >= (b.0 - a.0) - 1.5,
        "played {:.1} s in {:.1} s",
        b.1 - a.1,
        b.0 - a.0
    );
    assert_eq!(
        s["errors"].as_array().map(Vec::len),
        Some(0),
        "video errors: {s}"
    );
    assert_eq!(s["fatal"], 0, "fatal hls.js errors: {s}");
    // Before the drain the page showed a node (the one serving then: an anomaly move of the
    // start-up burst may have come first).
    assert!(
        first_node.as_str().is_some_and(|n| n.starts_with('n')),
        "{s}"
    );
    assert_eq!(
        s["node"],
        Value::from(to.to_string()),
        "the page shows the new node: {s}"
    );
    let kinds: Vec<&str> = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"migrated"),
        "the page showed the migration: {kinds:?}"
    );
    let fe_host = Url::parse(&fe).unwrap().authority();
    assert_eq!(
        s["segmentHost"].as_str(),
        Some(fe_host.as_str()),
        "every segment through the front-end: {s}"
    );
}

/// CPU time (user + system) of process `pid`, seconds.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// The process ids of every service instance of the cluster (distributors).
fn instance_pids(c: &LocalCluster) -> Vec<u32> {
    let mut out = Vec::new();
    for n in 1..=c.nodes.len() {
        let dir = c.dir().join(format!("n{n}")).join("instances");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.path().extension().and_then(|x| x.to_str()) == Some("pid")
                && let Some(p) = std::fs::read_to_string(e.path())
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
            {
                out.push(p);
            }
        }
    }
    out
}

/// Front-end and distributor CPU per viewer (µs of CPU per second per viewer), for each
/// way of delivering: `N` viewers of one 400 kbit/s video through the front-end, measured
/// over 15 s of steady state. A benchmark: run it in release,
/// `cargo nextest run --release -p smart --test players --run-ignored ignored-only -E 'test(cost)' --no-capture`
/// (`SMART_BENCH_VIEWERS`, default 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run in release with --run-ignored"]
async fn frontend_cost_per_viewer_relay_and_redirect() {
    use smart_vod::viewer::{ViewerConfig, run_viewer};
    let n: usize = std::env::var("SMART_BENCH_VIEWERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let video = Video::generated(VideoParams {
        bitrate_bps: KBPS * 1000,
        duration_ms: 300_000,
    })
    .unwrap();
    let origin = videos::serve_origin(vec![("v0".into(), video)])
        .await
        .unwrap();
    let mut rows = Vec::new();
    for (name, toml, hls) in [
        ("HLS, relay", "hls = \"relay\"", true),
        ("HLS, redirect per segment", "hls = \"redirect\"", true),
        ("progressive, relay", "progressive = \"relay\"", false),
        ("progressive, redirect", "progressive = \"redirect\"", false),
    ] {
        let (c, fe) = cluster(spec(3, &origin, toml)).await;
        let fe_pid = c.nodes[c.nodes.len() - 1].child.as_ref().unwrap().id();
        // The front-end node's own work (heartbeats, membership): subtracted below.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (i0, it) = (cpu_s(fe_pid), Instant::now());
        tokio::time::sleep(Duration::from_secs(5)).await;
        let idle = (cpu_s(fe_pid) - i0) / it.elapsed().as_secs_f64();
        let (stop, rx) = watch::channel(false);
        let shared = Arc::new(Shared::default());
        let mut tasks = Vec::new();
        for i in 0..n {
            let (shared, rx) = (shared.clone(), rx.clone());
            let delay = Duration::from_millis((4000 * i / n) as u64);
            let fe = fe.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if hls {
                    let url = Url::parse(&format!("{fe}/watch/v0.m3u8")).unwrap();
                    let cfg = HlsViewerConfig {
                        url: url.clone(),
                        frontend: Some(url),
                        start_buffer: Duration::from_secs(2),
                        buffer_goal: Duration::from_secs(10),
                    };
                    run_hls_viewer(&cfg, &shared, rx).await
                } else {
                    let url = Url::parse(&format!("{fe}/watch/v0")).unwrap();
                    let cfg = ViewerConfig {
                        url: url.clone(),
                        frontend: Some(url),
                        bitrate_bps: KBPS * 1000,
                        prefetch_bytes: 0,
                        start_buffer: Duration::from_millis(500),
                        start_offset: 0,
                    };
                    run_viewer(&cfg, &shared, rx).await
                }
            }));
        }
        // Ramp (4 s) and every HLS viewer's 10 s start-up burst, then steady state.
        tokio::time::sleep(Duration::from_secs(16)).await;
        let dist = instance_pids(&c);
        let cpu = |pids: &[u32]| pids.iter().map(|&p| cpu_s(p)).sum::<f64>();
        let (fe0, d0, t0) = (cpu_s(fe_pid), cpu(&dist), Instant::now());
        tokio::time::sleep(Duration::from_secs(15)).await;
        let secs = t0.elapsed().as_secs_f64();
        let fe_us = ((cpu_s(fe_pid) - fe0) / secs - idle).max(0.0) / n as f64 * 1e6;
        let d_us = (cpu(&dist) - d0) / secs / n as f64 * 1e6;
        let _ = stop.send(true);
        let mut stalls = 0;
        let mut corrupt = 0;
        let mut refused = 0;
        for t in tasks {
            let r = t.await.unwrap();
            stalls += r.stalls;
            corrupt += r.integrity_errors;
            refused += u32::from(r.http_error.is_some());
        }
        println!(
            "{name}: {n} viewers, front-end {fe_us:.1} µs/s per viewer (above its idle {:.0} µs/s), distributor {d_us:.1} µs/s per viewer, stalls {stalls}, corrupt {corrupt}, refused {refused}",
            idle * 1e6
        );
        rows.push((name, fe_us, d_us, stalls, corrupt, refused));
        drop(c);
    }
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    // The figures are only worth reading if every viewer played throughout.
    for (name, _, _, stalls, corrupt, refused) in &rows {
        assert_eq!(
            (*stalls, *corrupt, *refused),
            (0, 0, 0),
            "{name}: stalls, corrupt streams, refused viewers"
        );
    }
}
