//! The data plane's protection and pacing mechanisms on real sockets: coalesced pacing keeps
//! every viewer within its rate, a viewer that stops reading is dropped after the write
//! timeout, a slowloris head is dropped after the head timeout, and connections over the cap
//! get 503 and are counted (distributor and origin).
//!
//! Bounds are generous: these run on a shared 2-core machine beside other builds.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use smart_vod::distributor::{Distributor, DistributorConfig, bind};
use smart_vod::http::{self, Url};
use smart_vod::origin::{Origin, OriginLimits, Video};
use smart_vod::ts::VideoParams;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RATE_BPS: u64 = 400_000;

async fn origin_with(limits: OriginLimits, duration_ms: u64) -> (Arc<Origin>, Url) {
    let mut o = Origin::with_limits(limits);
    o.add(
        "v.ts",
        Video::generated(VideoParams {
            bitrate_bps: RATE_BPS,
            duration_ms,
        })
        .unwrap(),
    );
    let o = Arc::new(o);
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
    tokio::spawn(o.clone().serve(l));
    (o, url)
}

async fn distributor(
    origin: &Url,
    tweak: impl FnOnce(&mut DistributorConfig),
) -> (Arc<Distributor>, Url) {
    let mut cfg = DistributorConfig::new(origin.clone());
    tweak(&mut cfg);
    let d = Distributor::new(cfg);
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = Url::parse(&format!("http://{}/v.ts", l.local_addr().unwrap())).unwrap();
    tokio::spawn(d.clone().serve(l));
    (d, url)
}

/// A raw GET on a socket whose receive buffer is `rcvbuf` bytes (None: the default).
async fn raw_get(url: &Url, rcvbuf: Option<usize>) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(b) = rcvbuf {
        sock.set_recv_buffer_size(b as u32).unwrap();
    }
    let addr = format!("{}:{}", url.host, url.port).parse().unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    s.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", url.path).as_bytes())
        .await
        .unwrap();
    s
}

/// The status code of the response on `s` (reads until the head is complete or EOF).
async fn status_of(s: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_pacing_keeps_every_viewer_within_its_rate() {
    let (_o, origin) = origin_with(OriginLimits::default(), 60_000).await;
    // One pacer thread serves all 40 viewers on one timer; period 400 ms.
    let period = Duration::from_millis(400);
    let prefetch_ms = 500;
    let (d, url) = distributor(&origin, |c| {
        c.pacers = 1;
        c.tick = period;
        c.prefetch_ms = prefetch_ms;
    })
    .await;
    let rate = RATE_BPS as f64 / 8.0;
    let prefetch = rate * prefetch_ms as f64 / 1000.0;
    let readers: Vec<_> = (0..40)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 15)).await;
                let mut r = http::get(&url, None, Duration::from_secs(5)).await.unwrap();
                let t0 = Instant::now();
                let mut got = r.leftover.len() as f64;
                let (mut worst_late, mut worst_early) = (0f64, 0f64);
                let mut buf = vec![0u8; 65536];
                while t0.elapsed() < Duration::from_millis(3000) {
                    let n =
                        tokio::time::timeout(Duration::from_millis(50), r.stream.read(&mut buf))
                            .await
                            .map_or(0, |r| r.unwrap());
                    got += n as f64;
                    let t = t0.elapsed().as_secs_f64();
                    // Late: less than the bytes that fell due by now.
                    worst_late = worst_late.max((prefetch + rate * t - got) / rate);
                    // Early: more than prefetch plus one period ahead.
                    let ahead = prefetch + rate * (t + period.as_secs_f64());
                    worst_early = worst_early.max((got - ahead) / rate);
                }
                (worst_late, worst_early, got)
            })
        })
        .collect();
    for r in readers {
        let (late, early, got) = r.await.unwrap();
        println!("late {late:.3} s, early {early:.3} s, {got} bytes");
        // Within its rate: bytes never arrive more than 300 ms after they fall due (the
        // pacer's margin is 50 ms),
        assert!(late < 0.3, "late by {late} s");
        // nor more than a period plus 100 ms before,
        assert!(early < 0.1, "early by {early} s beyond the period");
        // and the viewer got what 3 s at the rate mean.
        assert!(got > prefetch + rate * 2.7, "got {got}");
    }
    assert_eq!(d.stats.write_timeouts.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_stops_reading_is_dropped_after_the_write_timeout() {
    let (_o, origin) = origin_with(OriginLimits::default(), 60_000).await;
    let (d, url) = distributor(&origin, |c| {
        c.tick = Duration::from_millis(100);
        c.prefetch_ms = 500;
        c.write_timeout = Duration::from_millis(400);
    })
    .await;
    // A reading viewer beside the stuck one must be kept.
    let mut reader = http::get(&url, None, Duration::from_secs(5)).await.unwrap();
    let keep = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let mut got = 0;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            match tokio::time::timeout(Duration::from_secs(2), reader.stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got += n,
                _ => break,
            }
        }
        got
    });
    // The stuck viewer reads nothing, with a tiny receive buffer.
    let _stuck = raw_get(&url, Some(4096)).await;
    let t = Instant::now();
    while d.stats.write_timeouts.load(Ordering::Relaxed) == 0
        && t.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dropped_after = t.elapsed();
    println!("dropped after {dropped_after:?}");
    assert_eq!(
        d.stats.write_timeouts.load(Ordering::Relaxed),
        1,
        "stuck viewer not dropped"
    );
    // The buffers (~140 KB at 50 KB/s) fill in about 3 s; then 400 ms without progress.
    assert!(dropped_after < Duration::from_secs(15));
    let got = keep.await.unwrap();
    // 25 KB prefetch + 5 s at 50 KB/s, less slack.
    assert!(got > 200_000, "the reading viewer was starved: {got}");
    assert_eq!(d.stats.write_timeouts.load(Ordering::Relaxed), 1);
    assert!(d.stats.viewers_active.load(Ordering::Relaxed) <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_drops_a_client_that_stops_reading() {
    let limits = OriginLimits {
        write_timeout: Duration::from_millis(300),
        ..OriginLimits::default()
    };
    // 3 MB: far more than the socket buffers hold.
    let (o, origin) = origin_with(limits, 60_000).await;
    let _stuck = raw_get(&origin.with_path("/v.ts"), Some(4096)).await;
    let t = Instant::now();
    while o.stats.write_timeouts.load(Ordering::Relaxed) == 0
        && t.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(o.stats.write_timeouts.load(Ordering::Relaxed), 1);
    assert!(o.stats.bytes_sent.load(Ordering::Relaxed) < 3_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_head_is_dropped_after_the_head_timeout() {
    let limits = OriginLimits {
        head_timeout: Duration::from_millis(300),
        ..OriginLimits::default()
    };
    let (o, origin) = origin_with(limits, 2_000).await;
    let (d, url) = distributor(&origin, |c| c.head_timeout = Duration::from_millis(300)).await;
    for target in [&url, &origin] {
        let mut s = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .unwrap();
        s.write_all(b"GET /v.ts HTTP/1.1\r\nHo").await.unwrap();
        let t = Instant::now();
        assert_eq!(status_of(&mut s).await, 408, "{target}");
        assert!(t.elapsed() < Duration::from_secs(3));
        // And the connection is closed.
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut b)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{target}: {n:?}");
    }
    assert_eq!(d.stats.head_timeouts.load(Ordering::Relaxed), 1);
    assert_eq!(o.stats.head_timeouts.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_503_and_are_counted() {
    let (_o, origin) = origin_with(OriginLimits::default(), 60_000).await;
    let (d, url) = distributor(&origin, |c| c.max_connections = 2).await;
    // Two viewers take the distributor's two places; a third is refused.
    let mut a = raw_get(&url, None).await;
    assert_eq!(status_of(&mut a).await, 200);
    let mut b = raw_get(&url, None).await;
    assert_eq!(status_of(&mut b).await, 200);
    let mut c = raw_get(&url, None).await;
    assert_eq!(status_of(&mut c).await, 503);
    assert_eq!(d.limit.refused.load(Ordering::Relaxed), 1);
    // A viewer leaves: its place is free again.
    drop(a);
    let t = Instant::now();
    while d.limit.open() >= 2 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut e = raw_get(&url, None).await;
    assert_eq!(status_of(&mut e).await, 200);
    drop((b, e));

    // The origin, capped at one: a client that holds its (3 MB) response open with a tiny
    // receive buffer keeps the place; the next is refused, and served once it is gone.
    let limits = OriginLimits {
        max_connections: 1,
        ..OriginLimits::default()
    };
    let (o, origin) = origin_with(limits, 60_000).await;
    let video = origin.with_path("/v.ts");
    let mut f = raw_get(&video, Some(4096)).await;
    assert_eq!(status_of(&mut f).await, 200);
    let mut g = raw_get(&video, None).await;
    assert_eq!(status_of(&mut g).await, 503);
    assert_eq!(o.limit.refused.load(Ordering::Relaxed), 1);
    drop(f);
    let t = Instant::now();
    while o.limit.open() >= 1 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut h = raw_get(&video, None).await;
    assert_eq!(status_of(&mut h).await, 200);
}
