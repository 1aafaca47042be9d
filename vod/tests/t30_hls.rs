//! HLS from the distributor on real sockets: byte-exact segments, sessions as clients,
//! hostile requests, drain, handoff (307 with the session, sessions and index in the
//! checkpoint), the fixed-cut fallback, and HLS viewers across a migration.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use smart_proto::workload::{WorkloadClient, WorkloadRequest};
use smart_vod::distributor::{Distributor, DistributorConfig, bind};
use smart_vod::hls::{MediaPlaylist, SegmentIndex};
use smart_vod::hls_viewer::{self, HlsLoadConfig, HlsViewerConfig};
use smart_vod::http::{self, Url};
use smart_vod::origin::{Origin, Video};
use smart_vod::ts::VideoParams;
use smart_vod::viewer::{self, Shared};
use smart_vod::workload;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Env {
    origin_url: Url,
    data: Bytes,
    index: SegmentIndex,
}

async fn origin(duration_ms: u64, indexes: bool) -> Env {
    let video = Video::generated(VideoParams {
        bitrate_bps: 400_000,
        duration_ms,
    })
    .unwrap();
    let (data, index) = (video.data.clone(), video.segment_index().clone());
    let mut o = Origin::new();
    if !indexes {
        o = o.without_indexes();
    }
    o.add("v.ts", video);
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let origin_url = Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
    tokio::spawn(Arc::new(o).serve(l));
    Env {
        origin_url,
        data,
        index,
    }
}

async fn distributor(
    env: &Env,
    tweak: impl FnOnce(&mut DistributorConfig),
) -> (Arc<Distributor>, Url) {
    let mut cfg = DistributorConfig::new(env.origin_url.clone());
    tweak(&mut cfg);
    let d = Distributor::new(cfg);
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = Url::parse(&format!("http://{}/", l.local_addr().unwrap())).unwrap();
    tokio::spawn(d.clone().serve(l));
    (d, url)
}

fn control_socket(d: &Arc<Distributor>, dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let l = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(workload::serve(
        d.clone(),
        l,
        Arc::new(tokio::sync::Notify::new()),
    ));
    path
}

/// GET without following redirects: status, headers, body.
async fn fetch(url: &Url, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let r = http::get(&url.with_path(path), None, Duration::from_secs(5))
        .await
        .unwrap();
    let (status, headers) = (r.status, r.headers.clone());
    let body = r.body(64 << 20, Duration::from_secs(10)).await.unwrap();
    (status, headers, body)
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

async fn playlist(url: &Url) -> (MediaPlaylist, String) {
    let (status, h, body) = fetch(url, "/v.ts.m3u8").await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&h, "content-type"),
        Some("application/vnd.apple.mpegurl")
    );
    assert_eq!(header(&h, "access-control-allow-origin"), Some("*"));
    let p = MediaPlaylist::parse(std::str::from_utf8(&body).unwrap()).unwrap();
    let sid = header(&h, "x-session").unwrap().to_string();
    (p, sid)
}

async fn usage(sock: &std::path::Path) -> serde_json::Value {
    WorkloadClient::connect(sock, Duration::from_secs(5))
        .await
        .unwrap()
        .call(&WorkloadRequest::Usage)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_are_byte_exact_slices_and_sessions_are_clients() {
    let env = origin(21_000, true).await;
    let (d, url) = distributor(&env, |c| {
        c.hls.session_timeout = Duration::from_millis(1500);
        // The whole video at once (the allowance has its own test).
        c.hls.burst = Duration::from_secs(60);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sock = control_socket(&d, dir.path(), "d.sock");
    let (p, sid) = playlist(&url).await;
    assert!(p.vod && p.ended);
    assert_eq!(p.segments.len(), env.index.len());
    assert_eq!(p.target_duration_s, env.index.target_duration_s());
    let u = usage(&sock).await;
    assert_eq!(u["clients"], 1, "the playlist opened a session: {u}");
    assert_eq!(u["hls_sessions"], 1);
    let mut all = Vec::new();
    for (n, (dur, uri)) in p.segments.iter().enumerate() {
        assert_eq!(uri, &format!("v.ts/seg/{n}.ts?s={sid}"));
        let seg_url = url.with_path("/v.ts.m3u8").join(uri).unwrap();
        let r = http::get(&seg_url, None, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "segment {n}");
        let off: u64 = r.header_u64("x-segment-offset").unwrap();
        let body = r.body(16 << 20, Duration::from_secs(5)).await.unwrap();
        let (a, b) = env.index.range(n).unwrap();
        assert_eq!(off, a);
        assert_eq!(&body[..], &env.data[a as usize..b as usize], "segment {n}");
        assert!((dur * 1000.0 - env.index.duration_ms(n).unwrap() as f64).abs() < 1.0);
        all.extend_from_slice(&body);
    }
    assert_eq!(
        &all[..],
        &env.data[..],
        "the segments are the whole file, in order"
    );
    let u = usage(&sock).await;
    assert_eq!(u["clients"], 1, "one session, however many segments: {u}");
    assert_eq!(u["hls_segments"], p.segments.len() as u64);
    assert_eq!(u["hls_delayed"], 0);
    // A Range inside a segment.
    let r = {
        let mut s = tokio::net::TcpStream::connect(url.authority())
            .await
            .unwrap();
        s.write_all(
            format!("GET /v.ts/seg/1.ts?s={sid} HTTP/1.1\r\nRange: bytes=10-19\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).await.unwrap();
        v
    };
    let text = String::from_utf8_lossy(&r);
    assert!(text.starts_with("HTTP/1.1 206"), "{text}");
    let (a, _) = env.index.range(1).unwrap();
    assert!(r.ends_with(&env.data[a as usize + 10..a as usize + 20]));
    // Released once it stops fetching.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let u = usage(&sock).await;
    assert_eq!(u["clients"], 0, "session timed out: {u}");
    assert_eq!(u["hls_sessions_expired"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ahead_of_real_time_is_held_to_its_allowance() {
    let env = origin(21_000, true).await;
    let (d, url) = distributor(&env, |c| {
        c.hls.burst = Duration::from_secs(4);
        c.hls.rate_factor = 4.0;
    })
    .await;
    let (p, _) = playlist(&url).await;
    let base = url.with_path("/v.ts.m3u8");
    let t = std::time::Instant::now();
    let mut media = 0.0;
    for (dur, uri) in p.segments.iter().take(5) {
        let u = base.join(uri).unwrap();
        assert_eq!(fetch(&u, &u.path).await.0, 200);
        media += dur;
    }
    // 4 s at once, the rest at 4x: (media - 4) / 4 seconds at least.
    let least = (media - 4.0) / 4.0;
    let took = t.elapsed().as_secs_f64();
    assert!(took >= least - 0.05, "{media} s of media in {took} s");
    assert!(took < least + 1.0, "{media} s of media in {took} s");
    assert!(
        d.hls_stats()
            .delayed
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_hls_requests_get_clear_errors() {
    let env = origin(6_000, true).await;
    let (d, url) = distributor(&env, |_| {}).await;
    let (_, sid) = playlist(&url).await;
    let n = env.index.len();
    for (path, want) in [
        (format!("/v.ts/seg/{n}.ts?s={sid}"), 404),
        ("/v.ts/seg/18446744073709551615.ts".to_string(), 404),
        ("/v.ts/seg/99999999999999999999999.ts".to_string(), 400),
        ("/v.ts/seg/-1.ts".to_string(), 400),
        ("/v.ts/seg/1e3.ts".to_string(), 400),
        ("/v.ts/seg/0.ts?s=bad%20id".to_string(), 400),
        (format!("/v.ts/seg/0.ts?s={}", "x".repeat(40)), 400),
        ("/nope.ts.m3u8".to_string(), 404),
        ("/nope.ts/seg/0.ts".to_string(), 404),
        ("/.m3u8".to_string(), 400),
    ] {
        let (status, h, _) = fetch(&url, &path).await;
        assert_eq!(status, want, "{path}");
        assert_eq!(
            header(&h, "access-control-allow-origin"),
            Some("*"),
            "{path}"
        );
    }
    let mut s = tokio::net::TcpStream::connect(url.authority())
        .await
        .unwrap();
    s.write_all(
        format!("GET /v.ts/seg/0.ts?s={sid} HTTP/1.1\r\nRange: bytes=999999999-\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut v = Vec::new();
    s.read_to_end(&mut v).await.unwrap();
    assert!(String::from_utf8_lossy(&v).starts_with("HTTP/1.1 416"));
    assert_eq!(d.hls_sessions(), 1, "errors open no sessions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_serves_live_sessions_and_refuses_new_ones() {
    let env = origin(6_000, true).await;
    let (d, url) = distributor(&env, |_| {}).await;
    let (p, _) = playlist(&url).await;
    d.drain();
    let seg = url.with_path("/v.ts.m3u8").join(&p.segments[0].1).unwrap();
    let (status, _, body) = fetch(&seg, &seg.path).await;
    assert_eq!(status, 200, "a live session keeps playing");
    assert_eq!(
        body.len() as u64,
        env.index.range(0).map(|(a, b)| b - a).unwrap()
    );
    let (status, h, _) = fetch(&url, "/v.ts.m3u8").await;
    assert_eq!(status, 503);
    assert!(header(&h, "retry-after").is_some());
    let (status, _, _) = fetch(&url, "/v.ts/seg/0.ts?s=newcomer").await;
    assert_eq!(status, 503, "an unknown session is a new client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_redirects_with_the_session_and_carries_sessions_and_index() {
    let env = origin(21_000, true).await;
    let (a, url_a) = distributor(&env, |_| {}).await;
    let (b, url_b) = distributor(&env, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let (sa, sb) = (
        control_socket(&a, dir.path(), "a.sock"),
        control_socket(&b, dir.path(), "b.sock"),
    );
    let (p, sid) = playlist(&url_a).await;
    let base = url_a.with_path("/v.ts.m3u8");
    let (status, _, _) = fetch(&base, &base.join(&p.segments[0].1).unwrap().path).await;
    assert_eq!(status, 200);
    let report = workload::migrate(&sa, &sb, &url_b.to_string())
        .await
        .unwrap();
    assert_eq!(report.handoff.hls_sessions, 1);
    assert_eq!(usage(&sa).await["clients"], 0, "the source released it");
    let ub = usage(&sb).await;
    assert_eq!(
        ub["clients"], 1,
        "the target counts it from the checkpoint: {ub}"
    );
    let origin_streams = ub["origin_streams"].as_u64().unwrap();
    // The player's next request goes to A and is sent to B with its session.
    let seg1 = base.join(&p.segments[1].1).unwrap();
    let (status, h, _) = fetch(&seg1, &seg1.path).await;
    assert_eq!(status, 307);
    let loc = header(&h, "location").unwrap();
    assert_eq!(loc, format!("{}v.ts/seg/1.ts?s={sid}", url_b));
    let (status, _, body) = fetch(&Url::parse(loc).unwrap(), &Url::parse(loc).unwrap().path).await;
    assert_eq!(status, 200);
    let (x, y) = env.index.range(1).unwrap();
    assert_eq!(&body[..], &env.data[x as usize..y as usize]);
    let ub = usage(&sb).await;
    assert_eq!(ub["clients"], 1, "the same session, not a second one: {ub}");
    assert_eq!(
        ub["hls_sessions_total"], 0,
        "adopted from the checkpoint, not opened"
    );
    assert!(
        ub["origin_streams"].as_u64().unwrap() <= origin_streams + 1,
        "the index came with the checkpoint: {ub}"
    );
    assert_eq!(b.hls_sessions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_without_indexes_gets_fixed_cuts() {
    let env = origin(9_000, false).await;
    let (_d, url) = distributor(&env, |_| {}).await;
    let (p, _) = playlist(&url).await;
    let base = url.with_path("/v.ts.m3u8");
    let mut all = Vec::new();
    for (_, uri) in &p.segments {
        let u = base.join(uri).unwrap();
        let (status, _, body) = fetch(&u, &u.path).await;
        assert_eq!(status, 200);
        assert_eq!(body.len() % 188, 0, "cut on packet boundaries");
        all.extend_from_slice(&body);
    }
    assert_eq!(&all[..], &env.data[..]);
    let d: f64 = p.segments.iter().map(|s| s.0).sum();
    assert!((d - 9.0).abs() < 0.1, "durations add up to the video: {d}");
    assert!(p.segments.iter().all(|s| s.0 <= 2.01));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_viewers_play_through_a_migration_without_stalls() {
    let env = origin(60_000, true).await;
    let (a, url_a) = distributor(&env, |c| c.prefetch_ms = 1000).await;
    let (b, url_b) = distributor(&env, |c| c.prefetch_ms = 1000).await;
    let dir = tempfile::tempdir().unwrap();
    let (sa, sb) = (
        control_socket(&a, dir.path(), "a.sock"),
        control_socket(&b, dir.path(), "b.sock"),
    );
    let cfg = HlsLoadConfig {
        viewer: HlsViewerConfig {
            url: url_a.with_path("/v.ts.m3u8"),
            frontend: None,
            start_buffer: Duration::from_millis(2000),
            buffer_goal: Duration::from_secs(6),
        },
        clients: 20,
        ramp: Duration::from_millis(500),
        // 9 s after the migration with a 6 s buffer goal: no viewer plays through on its
        // buffer alone.
        duration: Duration::from_secs(12),
    };
    let shared = Arc::new(Shared::default());
    let run = {
        let shared = shared.clone();
        tokio::spawn(async move { hls_viewer::run_hls_load(&cfg, shared).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(usage(&sa).await["hls_sessions"], 20);
    let report = workload::migrate(&sa, &sb, &url_b.to_string())
        .await
        .unwrap();
    assert_eq!(report.handoff.hls_sessions, 20);
    let reports = run.await.unwrap();
    let s = viewer::summarize(&reports, &shared);
    println!("{}", serde_json::to_string(&s).unwrap());
    assert_eq!(s.clients, 20);
    assert_eq!(s.started, 20);
    assert_eq!(
        s.corrupt, 0,
        "every byte checked across segments and distributors"
    );
    assert_eq!(s.stalls, 0);
    assert_eq!(s.refused, 0);
    assert!(
        reports.iter().all(|r| r.redirects > 0),
        "every viewer fetched from B through A's 307"
    );
    assert!(
        b.hls_stats()
            .segments
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    assert_eq!(b.hls_sessions(), 20, "B counts the same 20 sessions");
    // Media fetched kept up with the clock: at least the 12 s of the run minus start-up.
    let media_s = |r: &smart_vod::viewer::ViewerReport| r.bytes as f64 * 8.0 / 400_000.0;
    assert!(
        reports.iter().all(|r| media_s(r) >= 12.0 - 2.0),
        "viewers kept their buffers filled"
    );
}
