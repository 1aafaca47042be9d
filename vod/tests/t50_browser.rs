//! A real browser plays the player page across a live migration: headless Chromium (Debian's)
//! opens `/play/v.ts` on a front-end, hls.js plays the real H.264 + AAC video from
//! distributor A, and after ~6 s A is migrated to B (restore + handoff through the control
//! API, the front-end moved to B with a `migrated` event). The page keeps 6 s buffered, so
//! the 14 s after the migration play from B's segments. For 20 s of playback the page's
//! `currentTime` must keep advancing, no error may fire, the page must show node B and its
//! event, and segments must come from B. Skipped without chromium/node/ffmpeg/npm packages,
//! unless `SMART_REQUIRE_TOOLS=1`.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use smart_vod::browser::Browser;
use smart_vod::distributor::{Distributor, DistributorConfig, bind};
use smart_vod::frontend::Frontend;
use smart_vod::http::Url;
use smart_vod::origin::{Origin, Video};
use smart_vod::realvideo::RealVideo;
use smart_vod::tools;
use smart_vod::workload;

async fn serve_distributor(
    origin: &Url,
    dir: &std::path::Path,
    name: &str,
) -> (Arc<Distributor>, Url, std::path::PathBuf) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_the_page_through_a_migration() {
    let Some(ffmpeg) = tools::require_bin("ffmpeg") else {
        return;
    };
    let found = Browser::find().map_err(|e| e.to_string());
    let hint = found.as_ref().err().cloned().unwrap_or_default();
    let Some(browser_tools) = tools::require("a browser", found.ok(), &hint) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.ts");
    let made = RealVideo {
        preset: "ultrafast".into(),
        ..RealVideo::new(400, Duration::from_secs(40))
    }
    .make(&ffmpeg, &file)
    .unwrap();
    let mut o = Origin::new();
    o.add("v.ts", Video::from_file(&made.path, None).unwrap());
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let origin = Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
    tokio::spawn(Arc::new(o).serve(l));
    let (a, url_a, sa) = serve_distributor(&origin, dir.path(), "a.sock").await;
    let (b, url_b, sb) = serve_distributor(&origin, dir.path(), "b.sock").await;
    let fe = Frontend::new(url_a.clone());
    fe.place(url_a.clone(), "A");
    fe.push_event("placed", "v.ts on node A");
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let fe_url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(fe.clone().serve(l));

    let mut br = Browser::launch(&browser_tools).await.unwrap();
    println!("chromium {}", br.version);
    // A 6 s buffer goal: after the migration the page must fetch from B to keep playing.
    br.goto(&format!("{fe_url}/play/v.ts?buffer=6"))
        .await
        .unwrap();
    // The page refreshes window.smartPlayer every 250 ms; read the element's clock itself.
    let state = async |br: &mut Browser| -> Value {
        br.eval(
            "({...window.smartPlayer, currentTime: document.getElementById('video').currentTime})",
        )
        .await
        .unwrap()
    };
    // Playback starts.
    let t_open = Instant::now();
    loop {
        let s = state(&mut br).await;
        if s["currentTime"].as_f64().unwrap_or(0.0) > 0.5 {
            break;
        }
        assert!(
            t_open.elapsed() < Duration::from_secs(20),
            "playback did not start: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t0 = Instant::now();
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let mut migrated = false;
    while t0.elapsed() < Duration::from_secs(20) {
        let s = state(&mut br).await;
        samples.push((
            t0.elapsed().as_secs_f64(),
            s["currentTime"].as_f64().unwrap_or(-1.0),
        ));
        if !migrated && t0.elapsed() >= Duration::from_secs(6) {
            let r = workload::migrate(&sa, &sb, &url_b.to_string())
                .await
                .unwrap();
            assert_eq!(r.handoff.hls_sessions, 1, "the page's session was on A");
            fe.place(url_b.clone(), "B");
            fe.push_event("migrated", "v.ts moved from node A to node B");
            migrated = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let s = state(&mut br).await;
    let shot = std::env::var_os("SMART_SCREENSHOT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().to_path_buf())
        .join("player.png");
    let _ = br.screenshot(&shot).await;
    br.close().await;
    println!("page state: {s}");
    println!("samples (wall s, currentTime s): {samples:?}");

    // currentTime never went back and never stood still for more than 1.5 s.
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
    let (first, last) = (samples[0], *samples.last().unwrap());
    let advanced = last.1 - first.1;
    let wall = last.0 - first.0;
    assert!(
        advanced >= wall - 1.5,
        "played {advanced:.1} s in {wall:.1} s"
    );
    let buffered = s["buffered"].as_f64().unwrap_or(99.0);
    assert!(
        buffered <= 9.0,
        "the buffer goal held ({buffered:.1} s), so B fed the last 14 s"
    );
    assert_eq!(
        s["errors"].as_array().map(Vec::len),
        Some(0),
        "video errors: {s}"
    );
    assert_eq!(s["fatal"], 0, "fatal hls.js errors: {s}");
    assert_eq!(s["node"], "B", "the page shows the new node: {s}");
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
    assert_eq!(
        s["segmentHost"].as_str(),
        Some(url_b.authority().as_str()),
        "segments now come from B: {s}"
    );
    assert!(
        b.hls_stats()
            .segments
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    assert!(a.stats.redirects.load(std::sync::atomic::Ordering::Relaxed) > 0);
}
