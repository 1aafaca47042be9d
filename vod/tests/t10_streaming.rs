//! Real sockets on 127.0.0.1: origin, distributor, viewers, control API, handoff.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use smart_proto::workload::WorkloadClient;
use smart_vod::distributor::{Distributor, DistributorConfig, bind};
use smart_vod::frontend::Frontend;
use smart_vod::http::{self, Url};
use smart_vod::origin::{Origin, Video};
use smart_vod::ts::VideoParams;
use smart_vod::viewer::{self, LoadConfig, Shared, ViewerConfig};
use smart_vod::workload;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

struct Env {
    origin: Arc<Origin>,
    origin_url: Url,
    data: Bytes,
}

async fn origin(bitrate_bps: u64, duration_ms: u64) -> Env {
    let video = Video::generated(VideoParams {
        bitrate_bps,
        duration_ms,
    })
    .unwrap();
    let data = video.data.clone();
    let mut o = Origin::new();
    o.add("v.ts", video);
    let o = Arc::new(o);
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let origin_url = Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
    tokio::spawn(o.clone().serve(l));
    Env {
        origin: o,
        origin_url,
        data,
    }
}

struct Dist {
    d: Arc<Distributor>,
    url: Url,
    task: JoinHandle<()>,
}

async fn distributor_at(env: &Env, addr: &str, tweak: impl FnOnce(&mut DistributorConfig)) -> Dist {
    let mut cfg = DistributorConfig::new(env.origin_url.clone());
    tweak(&mut cfg);
    let d = Distributor::new(cfg);
    let l = bind(addr.parse().unwrap()).unwrap();
    let url = Url::parse(&format!("http://{}/v.ts", l.local_addr().unwrap())).unwrap();
    let task = tokio::spawn(d.clone().serve(l));
    Dist { d, url, task }
}

async fn distributor(env: &Env, tweak: impl FnOnce(&mut DistributorConfig)) -> Dist {
    distributor_at(env, "127.0.0.1:0", tweak).await
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

fn viewer_cfg(url: &Url) -> ViewerConfig {
    ViewerConfig {
        url: url.clone(),
        frontend: None,
        bitrate_bps: 400_000,
        prefetch_bytes: 0,
        start_buffer: Duration::from_millis(300),
        start_offset: 0,
    }
}

/// Reads a response body until EOF or `limit` bytes; returns status, headers and bytes.
async fn fetch_all(url: &Url, from: Option<u64>, limit: usize) -> (http::ClientResponse, Vec<u8>) {
    let mut r = http::get(url, from, Duration::from_secs(5)).await.unwrap();
    let mut body = std::mem::take(&mut r.leftover);
    let mut buf = vec![0u8; 65536];
    while body.len() < limit {
        let n = r.stream.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    (r, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacing_follows_bitrate_after_prefetch() {
    let env = origin(400_000, 20_000).await;
    let dist = distributor(&env, |c| {
        c.prefetch_ms = 500;
        c.tick = Duration::from_millis(50);
    })
    .await;
    let mut r = http::get(&dist.url, None, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header_u64("x-bitrate"), Some(400_000));
    let t0 = Instant::now();
    let mut got = r.leftover.len() as u64;
    let mut buf = vec![0u8; 65536];
    let mut at_1s = None;
    while t0.elapsed() < Duration::from_millis(2500) {
        let n = tokio::time::timeout(Duration::from_millis(200), r.stream.read(&mut buf))
            .await
            .map_or(0, |r| r.unwrap());
        got += n as u64;
        if at_1s.is_none() && t0.elapsed() >= Duration::from_secs(1) {
            at_1s = Some((got, t0.elapsed()));
        }
    }
    let (b1, t1) = at_1s.unwrap();
    let rate_bps = (got - b1) as f64 * 8.0 / (t0.elapsed() - t1).as_secs_f64();
    println!("paced rate {rate_bps:.0} bps, {got} bytes in 2.5 s");
    // Prefetch 25 000 B + 2.5 s x 50 000 B/s + one tick ahead; never far above or below.
    assert!((rate_bps - 400_000.0).abs() < 60_000.0, "rate {rate_bps}");
    assert!((140_000..=165_000).contains(&got), "got {got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_of_one_video_share_one_origin_stream() {
    let env = origin(400_000, 30_000).await;
    // The window (20 % of 30 s = 300 KB) must span the viewers' spread (~200 KB here).
    let dist = distributor(&env, |c| c.block_size = 16 * 1024).await;
    let cfg = LoadConfig {
        viewer: viewer_cfg(&dist.url),
        clients: 40,
        ramp: Duration::from_millis(500),
        duration: Duration::from_millis(2000),
    };
    let shared = Arc::new(Shared::default());
    let reports = viewer::run_load(&cfg, shared.clone()).await;
    let s = viewer::summarize(&reports, &shared);
    assert_eq!(s.clients, 40);
    assert_eq!(s.started, 40);
    assert_eq!(s.corrupt, 0);
    assert_eq!(s.stalls, 0);
    assert_eq!(dist.d.stats.origin_streams.load(Ordering::Relaxed), 1);
    assert_eq!(env.origin.stats.streams.load(Ordering::Relaxed), 1);
    let (hits, _, _, _) = dist.d.cache_counters();
    assert!(hits > 40, "hits {hits}");
    // 40 viewers got far more than the origin sent: the cache is shared.
    assert!(
        dist.d.stats.bytes_sent.load(Ordering::Relaxed)
            > 10 * dist.d.stats.bytes_received.load(Ordering::Relaxed) / 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_never_exceeds_window_and_evicts_behind_viewers() {
    let env = origin(2_000_000, 20_000).await; // 5 MB
    let dist = distributor(&env, |c| {
        c.block_size = 16 * 1024;
        c.window_bytes = Some(128 * 1024);
        c.prefetch_ms = 200;
    })
    .await;
    let cfg = LoadConfig {
        viewer: ViewerConfig {
            bitrate_bps: 2_000_000,
            ..viewer_cfg(&dist.url)
        },
        clients: 5,
        ramp: Duration::from_millis(400),
        duration: Duration::from_millis(2500),
    };
    let shared = Arc::new(Shared::default());
    let d = dist.d.clone();
    let watcher = tokio::spawn(async move {
        let mut max = 0;
        for _ in 0..240 {
            max = max.max(d.cache_bytes());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        max
    });
    let reports = viewer::run_load(&cfg, shared.clone()).await;
    let max_seen = watcher.await.unwrap();
    let (_, _, evictions, peak) = dist.d.cache_counters();
    println!("max seen {max_seen}, peak {peak}, evictions {evictions}");
    assert!(peak <= 128 * 1024, "peak {peak}");
    assert!(max_seen > 0 && max_seen <= 128 * 1024);
    assert!(evictions > 10, "evictions {evictions}");
    let s = viewer::summarize(&reports, &shared);
    assert_eq!(s.corrupt, 0);
    assert!(s.bytes > 4 * 500_000, "bytes {}", s.bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributor_started_for_one_video_serves_no_other() {
    let env = origin(400_000, 5_000).await;
    let other = Video::generated(VideoParams {
        bitrate_bps: 400_000,
        duration_ms: 5_000,
    })
    .unwrap();
    // The origin has a second video, which this distributor was not admitted for.
    let mut o = Origin::new();
    o.add(
        "v.ts",
        Video::generated(VideoParams {
            bitrate_bps: 400_000,
            duration_ms: 5_000,
        })
        .unwrap(),
    );
    o.add("secret.ts", other);
    let o = Arc::new(o);
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let origin_url = Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
    tokio::spawn(o.clone().serve(l));
    let env = Env { origin_url, ..env };
    let dist = distributor(&env, |c| c.only_video = Some("/v.ts".into())).await;
    let (ok, body) = fetch_all(&dist.url, None, 1000).await;
    assert_eq!(ok.status, 200);
    assert!(!body.is_empty());
    for path in ["/secret.ts", "/secret.ts.m3u8", "/secret.ts/seg/0.ts"] {
        let (status, _) = raw(
            &dist.url,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 404, "{path}");
    }
    assert_eq!(dist.d.stats.other_video.load(Ordering::Relaxed), 3);
    // Its own video's playlist is served.
    let (status, _) = raw(&dist.url, "GET /v.ts.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    dist.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_at_arbitrary_offsets_returns_exact_bytes() {
    let env = origin(400_000, 4_000).await; // 200 KB
    let dist = distributor(&env, |c| c.prefetch_ms = 60_000).await;
    let size = env.data.len() as u64;
    for from in [0u64, 1, 187, 188, 12_345, 65_535, 65_536, 131_071, size - 1] {
        for url in [&dist.url, &env.origin_url.with_path("/v.ts")] {
            let (r, body) = fetch_all(url, Some(from), usize::MAX).await;
            assert_eq!(r.status, 206, "{url} from {from}");
            assert_eq!(r.content_range(), Some((from, size)));
            assert_eq!(
                body.as_slice(),
                &env.data[from as usize..],
                "{url} from {from}"
            );
        }
    }
    // Closed and suffix ranges over raw requests.
    for (range, expect) in [
        ("bytes=100-299", 100..300usize),
        ("bytes=-1000", size as usize - 1000..size as usize),
    ] {
        let (status, body) = raw(
            &dist.url,
            &format!("GET /v.ts HTTP/1.1\r\nHost: x\r\nRange: {range}\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 206, "{range}");
        assert_eq!(body, &env.data[expect]);
    }
}

/// Sends raw bytes, returns the status and body.
async fn raw(url: &Url, req: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| out[i + 4..].to_vec())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_and_absurd_ranges_get_http_errors() {
    let env = origin(400_000, 2_000).await;
    let dist = distributor(&env, |_| {}).await;
    let size = env.data.len();
    let cases: Vec<(String, u16)> = vec![
        ("garbage\r\n\r\n".into(), 400),
        ("GET /v.ts HTTP/1.1\r\nBad Header\r\n\r\n".into(), 400),
        ("DELETE /v.ts HTTP/1.1\r\n\r\n".into(), 405),
        ("GET /../../etc/passwd HTTP/1.1\r\n\r\n".into(), 400),
        (
            format!("GET /v.ts HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000)),
            431,
        ),
        ("GET /nope.ts HTTP/1.1\r\n\r\n".into(), 404),
        (
            format!("GET /v.ts HTTP/1.1\r\nRange: bytes={size}-\r\n\r\n"),
            416,
        ),
        (
            "GET /v.ts HTTP/1.1\r\nRange: bytes=99999999999999999999999-\r\n\r\n".into(),
            416,
        ),
        (
            "GET /v.ts HTTP/1.1\r\nRange: bytes=500-100\r\n\r\n".into(),
            416,
        ),
        (
            "GET /v.ts HTTP/1.1\r\nRange: bytes=0-1,5-9\r\n\r\n".into(),
            416,
        ),
        ("GET /v.ts HTTP/1.1\r\nRange: pages=1-2\r\n\r\n".into(), 416),
    ];
    for (req, want) in &cases {
        for url in [&dist.url, &env.origin_url] {
            let (status, _) = raw(url, req).await;
            assert_eq!(status, *want, "{url}: {:?}", &req[..req.len().min(60)]);
        }
    }
    // The distributor still serves after all that.
    let (r, body) = fetch_all(&dist.url, Some(0), 1000).await;
    assert_eq!(r.status, 206);
    assert!(body.len() >= 1000);
    assert!(dist.d.stats.errors.load(Ordering::Relaxed) >= cases.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_keeps_every_byte_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let env = origin(400_000, 6_000).await; // 300 KB
    let a = distributor(&env, |c| c.prefetch_ms = 1000).await;
    let b = distributor(&env, |c| c.prefetch_ms = 60_000).await;
    let (sa, sb) = (
        control_socket(&a.d, dir.path(), "a.sock"),
        control_socket(&b.d, dir.path(), "b.sock"),
    );
    // A raw collector keeps all bytes; three model viewers check continuity counters.
    let collector = {
        let url = a.url.clone();
        tokio::spawn(async move {
            let mut data = Vec::new();
            let mut url = url;
            let mut connections = 0;
            loop {
                let mut r = http::get(&url, Some(data.len() as u64), Duration::from_secs(5))
                    .await
                    .unwrap();
                if r.status == 307 {
                    url = url.join(r.header("location").unwrap()).unwrap();
                    continue;
                }
                assert_eq!(r.status, 206);
                assert_eq!(r.content_range().unwrap().0, data.len() as u64);
                connections += 1;
                data.extend_from_slice(&r.leftover);
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = r.stream.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    data.extend_from_slice(&buf[..n]);
                }
                if data.len() as u64 >= r.content_range().unwrap().1 {
                    return (data, connections);
                }
            }
        })
    };
    let shared = Arc::new(Shared::default());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let viewers: Vec<_> = (0..3)
        .map(|_| {
            let (cfg, sh, rx) = (viewer_cfg(&a.url), shared.clone(), rx.clone());
            tokio::spawn(async move { viewer::run_viewer(&cfg, &sh, rx).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let usage = WorkloadClient::connect(&sa, Duration::from_secs(5))
        .await
        .unwrap()
        .usage()
        .await
        .unwrap();
    assert_eq!(usage.clients, 4);
    assert!(usage.cache_bytes > 0);
    let report = workload::migrate(&sa, &sb, &format!("http://{}", b.url.authority()))
        .await
        .unwrap();
    assert_eq!(report.handoff.viewers, 4);
    assert!(report.restore.bytes > 0 && report.restore.bytes == usage.cache_bytes);
    let (data, connections) = tokio::time::timeout(Duration::from_secs(10), collector)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connections, 2);
    assert!(data == env.data, "collected bytes differ from the video");
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.send(true).unwrap();
    for v in viewers {
        let r = v.await.unwrap();
        assert_eq!(r.integrity_errors, 0);
        assert_eq!(r.reconnects, 1);
        assert_eq!(r.redirects, 1);
        assert_eq!(r.gaps_ms.len(), 1);
        assert!(r.gaps_ms[0] < 1000.0, "gap {:?}", r.gaps_ms);
    }
    // B served all four after the handoff.
    assert!(b.d.stats.viewers_total.load(Ordering::Relaxed) >= 4);
    assert!(b.d.stats.bytes_sent.load(Ordering::Relaxed) > 0);
    let _ = (a.task, b.task);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_stalls_when_distributor_stops_and_recovers_when_it_returns() {
    let env = origin(400_000, 30_000).await;
    let a = distributor(&env, |c| c.prefetch_ms = 500).await;
    let addr = a.url.authority();
    let shared = Arc::new(Shared::default());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let v = {
        let (cfg, sh) = (viewer_cfg(&a.url), shared.clone());
        tokio::spawn(async move { viewer::run_viewer(&cfg, &sh, rx).await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    a.d.stop();
    a.task.abort();
    let _ = a.task.await;
    // Buffer (~0.6 s) runs dry while nothing listens.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let back = distributor_at(&env, &addr, |c| c.prefetch_ms = 500).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tx.send(true).unwrap();
    let r = v.await.unwrap();
    println!("{r:?}");
    assert!(r.stalls >= 1, "no stall: {r:?}");
    assert!(r.rebuffer_ms > 300.0);
    assert!(r.reconnects >= 1);
    assert_eq!(r.integrity_errors, 0);
    assert!(
        back.d.stats.bytes_sent.load(Ordering::Relaxed) > 50_000,
        "no recovery"
    );
    // After recovering it plays again: the last buffer is not empty.
    assert!(r.offset > 400_000 / 8 * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_returns_to_frontend_when_its_distributor_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let env = origin(400_000, 20_000).await;
    let a = distributor(&env, |c| c.prefetch_ms = 1500).await;
    let b = distributor(&env, |_| {}).await;
    let fe = Frontend::new(a.url.with_path("/"));
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let fe_url = Url::parse(&format!("http://{}/v.ts", l.local_addr().unwrap())).unwrap();
    tokio::spawn(fe.clone().serve(l));
    let shared = Arc::new(Shared::default());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let v = {
        let cfg = ViewerConfig {
            frontend: Some(fe_url.clone()),
            ..viewer_cfg(&fe_url)
        };
        let sh = shared.clone();
        tokio::spawn(async move { viewer::run_viewer(&cfg, &sh, rx).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (sa, sb) = (
        control_socket(&a.d, dir.path(), "a.sock"),
        control_socket(&b.d, dir.path(), "b.sock"),
    );
    let restored = WorkloadClient::connect(&sb, Duration::from_secs(5))
        .await
        .unwrap()
        .restore(&sa.to_string_lossy(), None)
        .await
        .unwrap();
    assert!(restored.bytes > 0);
    // A dies without a handoff; the front-end now points at B.
    fe.set_target(b.url.with_path("/"));
    a.d.stop();
    a.task.abort();
    tokio::time::sleep(Duration::from_millis(800)).await;
    tx.send(true).unwrap();
    let r = v.await.unwrap();
    assert_eq!(r.integrity_errors, 0);
    assert_eq!(r.reconnects, 1);
    assert!(r.redirects >= 2, "went through the front-end twice: {r:?}");
    assert_eq!(r.stalls, 0);
    assert!(b.d.stats.bytes_sent.load(Ordering::Relaxed) > 0);
    assert_eq!(
        b.d.stats.origin_streams.load(Ordering::Relaxed),
        1,
        "B read ahead from the origin once"
    );
    // B's usage tells what the restore brought and that none of it came from the origin
    // again (its cache holds the whole video).
    let u = WorkloadClient::connect(&sb, Duration::from_secs(5))
        .await
        .unwrap()
        .usage()
        .await
        .unwrap();
    assert_eq!(u.restored_bytes, restored.bytes, "{u:?}");
    assert_eq!(u.origin_refetched_bytes, 0, "{u:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_speaks_the_documented_line_protocol() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let env = origin(400_000, 2_000).await;
    let dist = distributor(&env, |_| {}).await;
    let path = control_socket(&dist.d, dir.path(), "c.sock");
    let (_, body) = fetch_all(&dist.url, Some(0), 30_000).await;
    assert!(body.len() >= 30_000);
    let s = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (rd, mut wr) = s.into_split();
    let mut lines = BufReader::new(rd).lines();
    wr.write_all(b"{\"op\":\"usage\"}\nnot json\n{\"op\":\"frobnicate\"}\n{\"op\":\"drain\"}\n")
        .await
        .unwrap();
    let usage: serde_json::Value =
        serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    for key in ["bytes_sent", "bytes_received", "clients", "cache_bytes"] {
        assert!(usage[key].is_u64(), "{key} missing in {usage}");
    }
    assert!(usage["bytes_sent"].as_u64().unwrap() >= 30_000, "{usage}");
    assert!(usage["cache_bytes"].as_u64().unwrap() > 0);
    for _ in 0..2 {
        let bad: serde_json::Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(bad["ok"], false);
        assert!(bad["error"].is_string());
    }
    let drained: serde_json::Value =
        serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(drained["ok"], true);
    // Draining: new viewers are refused with 503.
    let (status, _) = raw(&dist.url, "GET /v.ts HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_shows_live_bytes_silence_and_corruption() {
    // A playing viewer: its progress moves while bytes flow and stands still once its
    // distributor is gone; at the end it agrees with the report.
    let env = origin(400_000, 30_000).await;
    let a = distributor(&env, |c| c.prefetch_ms = 500).await;
    let progress = Arc::new(viewer::Progress::default());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let v = {
        let (cfg, p) = (viewer_cfg(&a.url), progress.clone());
        tokio::spawn(
            async move { viewer::run_viewer_watched(&cfg, &Shared::default(), &p, rx).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let first = progress.last_byte().expect("bytes arrived");
    assert!(progress.bytes() > 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        progress.last_byte().unwrap() > first,
        "paced bytes keep coming"
    );
    a.d.stop();
    a.task.abort();
    let _ = a.task.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let silent_since = progress.last_byte().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        progress.last_byte(),
        Some(silent_since),
        "nothing after the stop"
    );
    tx.send(true).unwrap();
    let r = v.await.unwrap();
    assert_eq!(progress.bytes(), r.bytes);
    assert_eq!(progress.integrity_errors(), 0);
    assert_eq!(r.integrity_errors, 0);

    // A server that answers 200 with bytes that are no transport stream: the errors show
    // while the viewer is still connected.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/v.ts", l.local_addr().unwrap())).unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = [0u8; 1024];
        let _ = s.read(&mut req).await.unwrap();
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&[0u8; 188 * 10]).await.unwrap();
        // Held open: the viewer is still connected when the test reads its progress.
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let progress = Arc::new(viewer::Progress::default());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let v = {
        let (cfg, p) = (viewer_cfg(&url), progress.clone());
        tokio::spawn(
            async move { viewer::run_viewer_watched(&cfg, &Shared::default(), &p, rx).await },
        )
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while progress.integrity_errors() == 0 {
        assert!(Instant::now() < deadline, "no live integrity error");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(progress.bytes(), 188 * 10);
    tx.send(true).unwrap();
    let r = v.await.unwrap();
    assert_eq!(r.integrity_errors, progress.integrity_errors());
    server.abort();
}
