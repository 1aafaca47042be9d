//! `smart bench migration` (root): the thesis's migration experiments (its Figures 5.4 and
//! 5.9) across namespace hosts. One distributor with a pre-filled cache of C MB and V
//! viewers relayed by the front-end is moved to another host by a drain; for each point the
//! total migration time (drain asked → the Control lists the new instance, which has
//! restored the cache over TCP and taken the viewers), the pre-copy's own time, the viewers'
//! pauses (the front-end relay's resume histogram) and the bytes restored and fetched from
//! the origin again. Two sweeps: cache size at a fixed audience, audience at a fixed cache.
//!
//! Every point is a fresh cluster (three agent hosts and a front-end) on the same hosts
//! ([`crate::netns`]); the origin (a generated 400 kbit/s video long enough for the
//! largest cache) and the viewers run in the client namespace, on the thread that runs the
//! whole benchmark. `--svg-dir` writes the two plots; `--json` prints one object.
//!
//! ## Layout
//! - [`MigrationBenchArgs`], [`Point`], [`run`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use smart_api::{Request, Response};
use smart_vod::http::Url;
use smart_vod::origin::{Origin, Video};
use smart_vod::ts::VideoParams;
use smart_vod::viewer::{Shared, ViewerConfig, run_viewer};

use crate::cluster::{ClusterError, ClusterSpec, LocalCluster};
use crate::netns::Hosts;

const KBPS: u64 = 400;
const CLIENT_OCTET: u8 = 100;
const ORIGIN_PORT: u16 = 8000;
/// The thesis's OpenVZ migration of a distributor with a 72 MB cache (its §5.4).
const THESIS_72MB_MS: f64 = 2000.0;

/// `smart bench migration` options.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrationBenchArgs {
    /// Cache sizes of the first sweep, MB.
    #[arg(long, value_delimiter = ',', default_value = "18,36,72,144")]
    pub cache_mb: Vec<u64>,
    /// Viewers during the first sweep.
    #[arg(long, default_value_t = 100)]
    pub cache_sweep_viewers: usize,
    /// Audiences of the second sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50,100,200")]
    pub viewers: Vec<usize>,
    /// Cache during the second sweep, MB.
    #[arg(long, default_value_t = 72)]
    pub viewer_sweep_cache_mb: u64,
    /// Write `migration-vs-cache.svg` and `migration-vs-viewers.svg` here.
    #[arg(long)]
    pub svg_dir: Option<PathBuf>,
    /// Print one JSON object instead of the tables.
    #[arg(long)]
    pub json: bool,
}

/// One migration.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// The distributor's cache, MB (its window, pre-filled).
    pub cache_mb: u64,
    /// Viewers relayed by the front-end.
    pub viewers: usize,
    /// Cache bytes held by the source when it was drained.
    pub cache_bytes: u64,
    /// Drain asked until the Control lists the new instance, ms.
    pub total_ms: f64,
    /// The pre-copy (the target's agent pulling the checkpoint over TCP), ms.
    pub restore_ms: f64,
    /// Bytes the target restored.
    pub restored_bytes: u64,
    /// Bytes the target fetched from the origin again for restored blocks.
    pub refetched_bytes: u64,
    /// Bytes the target received from the origin at all, by 3 s after the move (blocks
    /// the pre-copy lacked, such as those its source fetched after its checkpoint).
    pub target_origin_bytes: u64,
    /// Relayed streams resumed (each moved viewer once).
    pub resumes: u64,
    /// Viewers' pauses: p50 and p99 as the upper bounds of their histogram buckets, the
    /// mean and the longest, ms.
    pub pause_p50_ms_at_most: f64,
    /// See `pause_p50_ms_at_most`.
    pub pause_p99_ms_at_most: f64,
    /// See `pause_p50_ms_at_most`.
    pub pause_mean_ms: f64,
    /// See `pause_p50_ms_at_most`.
    pub pause_max_ms: f64,
    /// Viewers' stalls and corrupt bytes over the point (0 and 0).
    pub stalls: u64,
    /// See `stalls`.
    pub corrupt: u64,
}

fn err(what: impl Into<String>) -> ClusterError {
    ClusterError::Node {
        node: 0,
        reason: what.into(),
    }
}

/// Runs both sweeps on namespace hosts (the whole run on a thread in the client
/// namespace) and prints the tables or the JSON.
pub async fn run(args: MigrationBenchArgs) -> Result<(), ClusterError> {
    tokio::task::spawn_blocking(move || {
        let hosts = Arc::new(Hosts::create("smmig", 4, &[("c", CLIENT_OCTET)])?);
        let inner = hosts.clone();
        let r = std::thread::spawn(move || -> Result<(), ClusterError> {
            Hosts::enter(&inner.named("c"))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|source| ClusterError::Io {
                    what: "starting the benchmark's runtime".into(),
                    source,
                })?;
            rt.block_on(async {
                tokio::select! {
                    r = sweeps(args, inner) => r,
                    _ = tokio::signal::ctrl_c() => Err(ClusterError::Interrupted),
                }
            })
        })
        .join();
        drop(hosts);
        r.unwrap_or_else(|_| Err(err("the benchmark panicked")))
    })
    .await
    .map_err(|e| err(e.to_string()))?
}

async fn sweeps(args: MigrationBenchArgs, hosts: Arc<Hosts>) -> Result<(), ClusterError> {
    let biggest = args
        .cache_mb
        .iter()
        .copied()
        .chain([args.viewer_sweep_cache_mb])
        .max()
        .unwrap_or(72);
    // Long enough for the biggest cache plus what the viewers play meanwhile.
    let secs = biggest * 1_000_000 * 8 / (KBPS * 1000) + 600;
    let video = Video::generated(VideoParams {
        bitrate_bps: KBPS * 1000,
        duration_ms: secs * 1000,
    })
    .map_err(|e| err(format!("generating the video: {e}")))?;
    let mut origin = Origin::new();
    origin.add("v0", video);
    let addr = format!("{}:{ORIGIN_PORT}", hosts.ip(CLIENT_OCTET as usize));
    let l = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ClusterError::Io {
            what: format!("binding the origin at {addr}"),
            source,
        })?;
    let origin_task = tokio::spawn(Arc::new(origin).serve(l));
    let say = |s: String| {
        if !args.json {
            eprintln!("{s}");
        }
    };
    let mut by_cache = Vec::new();
    for &mb in &args.cache_mb {
        say(format!(
            "migrating a {mb} MB cache with {} viewers ...",
            args.cache_sweep_viewers
        ));
        let p = point(&hosts, &addr, mb, args.cache_sweep_viewers).await?;
        say(format!("  {}", row(&p)));
        by_cache.push(p);
    }
    let mut by_viewers = Vec::new();
    for &v in &args.viewers {
        say(format!(
            "migrating a {} MB cache with {v} viewers ...",
            args.viewer_sweep_cache_mb
        ));
        let p = point(&hosts, &addr, args.viewer_sweep_cache_mb, v).await?;
        say(format!("  {}", row(&p)));
        by_viewers.push(p);
    }
    origin_task.abort();
    if let Some(dir) = &args.svg_dir {
        plot(dir, &by_cache, &by_viewers).map_err(|e| err(format!("plotting: {e}")))?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "cache_sweep": by_cache,
                "viewer_sweep": by_viewers,
                "thesis_openvz_72mb_ms": THESIS_72MB_MS,
            }))
            .expect("plain data")
        );
    } else {
        println!("{}", table("Migration vs cache size", &by_cache));
        println!("{}", table("Migration vs viewers", &by_viewers));
    }
    Ok(())
}

fn row(p: &Point) -> String {
    format!(
        "| {} | {} | {:.1} | {:.0} | {:.0} | {:.1} | {} | {} | ≤ {:.0} | ≤ {:.0} | {:.0} | {:.0} | {} | {} |",
        p.cache_mb,
        p.viewers,
        p.cache_bytes as f64 / 1e6,
        p.total_ms,
        p.restore_ms,
        p.restored_bytes as f64 / 1e6,
        p.refetched_bytes,
        p.target_origin_bytes,
        p.pause_p50_ms_at_most,
        p.pause_p99_ms_at_most,
        p.pause_mean_ms,
        p.pause_max_ms,
        p.stalls,
        p.corrupt
    )
}

fn table(title: &str, points: &[Point]) -> String {
    let mut t = format!(
        "{title}\n\n| cache MB | viewers | held MB | migration ms | pre-copy ms | restored MB | refetched B | target's origin B | pause p50 ms | pause p99 ms | pause mean ms | pause max ms | stalls | corrupt |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for p in points {
        t.push_str(&row(p));
        t.push('\n');
    }
    t
}

async fn usage(dir: &Path, node: u64, inst: &str) -> Option<smart_proto::workload::Usage> {
    let sock = dir.join(format!("n{node}/instances/{inst}.sock"));
    smart_proto::workload::WorkloadClient::connect(&sock, Duration::from_secs(2))
        .await
        .ok()?
        .usage()
        .await
        .ok()
}

/// Waits for `f` to give a value, every 50 ms, at most `within`.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> F,
) -> Result<T, ClusterError> {
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if t.elapsed() >= within {
            return Err(ClusterError::Timeout {
                what: what.into(),
                after: within,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One migration of a `mb` MB cache with `viewers` viewers, on a fresh cluster.
async fn point(
    hosts: &Arc<Hosts>,
    origin: &str,
    mb: u64,
    viewers: usize,
) -> Result<Point, ClusterError> {
    let exe = std::env::current_exe().map_err(|source| ClusterError::Io {
        what: "locating the smart executable".into(),
        source,
    })?;
    let mut spec = ClusterSpec::new(exe, 4);
    spec.hosts = Some(hosts.clone());
    spec.frontends = vec![4];
    spec.no_agent = vec![4];
    spec.origin = format!("http://{origin}");
    spec.bitrate_bps = KBPS * 1000;
    // The agents log the pre-copy's figures at info.
    spec.log = "info".into();
    spec.distributor_args = vec!["--window-mb".into(), mb.to_string(), "--prefill".into()];
    // Viewers, origin and four nodes share this machine's cores: a node starved for half a
    // second must not be declared dead in the middle of the measurement.
    spec.extra_toml = "\n[timing]\ndead_after = \"2s\"\n".into();
    let c = LocalCluster::start(spec)?;
    let all = c.running();
    c.wait_agreed_control(&all, Duration::from_secs(30), |_, _| true)
        .await?;
    let fe_url = c.frontend_url(4).expect("the front-end");
    let url = Url::parse(&format!("{fe_url}/watch/v0")).map_err(err)?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared::default());
    let mut tasks = Vec::new();
    for i in 0..viewers {
        let cfg = ViewerConfig {
            url: url.clone(),
            frontend: Some(url.clone()),
            bitrate_bps: KBPS * 1000,
            prefetch_bytes: 0,
            start_buffer: Duration::from_millis(1000),
            start_offset: 0,
        };
        let (shared, rx) = (shared.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
            run_viewer(&cfg, &shared, rx).await
        }));
    }
    let placed = until(
        "the service to be placed",
        Duration::from_secs(60),
        || async {
            c.services(4)
                .await
                .into_iter()
                .find(|s| s.placement.service == "video-v0" && !s.instance.is_empty())
        },
    )
    .await?;
    let (src, inst) = (placed.placement.node.0, placed.instance.clone());
    // The pre-fill reads the whole window from the origin.
    let want = mb * 1_000_000 - 1_000_000;
    let held = until("the cache to fill", Duration::from_secs(180), || async {
        usage(c.dir(), src, &inst)
            .await
            .filter(|u| u.cache_bytes >= want)
            .map(|u| u.cache_bytes)
    })
    .await?;
    // Every viewer playing for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = c.counters(4).await;
    let t = Instant::now();
    let cl = c.client(4).await?;
    match cl
        .with_timeout(Duration::from_secs(30))
        .request(Request::Drain {
            node: smart_proto::NodeId(src),
        })
        .await
    {
        Ok(Response::Ok) => {}
        other => return Err(err(format!("drain of n{src}: {other:?}"))),
    }
    let moved = until("the migration", Duration::from_secs(120), || async {
        c.services(4).await.into_iter().find(|s| {
            s.placement.service == "video-v0"
                && s.placement.node.0 != src
                && !s.instance.is_empty()
                && s.instance != inst
        })
    })
    .await?;
    let total_ms = t.elapsed().as_secs_f64() * 1000.0;
    // Let the moved viewers settle before reading what they saw.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (to, new) = (moved.placement.node.0, moved.instance.clone());
    let u = usage(c.dir(), to, &new).await.unwrap_or_default();
    let after = c.counters(4).await;
    let _ = stop.send(true);
    let (mut stalls, mut corrupt) = (0, 0);
    for t in tasks {
        if let Ok(r) = t.await {
            stalls += r.stalls as u64;
            corrupt += r.integrity_errors;
        }
    }
    let delta = |k: &str| {
        after
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(k).copied().unwrap_or(0))
    };
    let resumes = delta("frontend_relay_resumes");
    // The pre-copy's own time, from the target agent's log line.
    let log = std::fs::read_to_string(c.dir().join(format!("n{to}.log"))).unwrap_or_default();
    let restore_ms = log
        .lines()
        .rev()
        .find(|l| l.contains("restored over the network") && l.contains(&new))
        .and_then(|l| l.split(" ms=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    Ok(Point {
        cache_mb: mb,
        viewers,
        cache_bytes: held,
        total_ms,
        restore_ms,
        restored_bytes: u.restored_bytes,
        refetched_bytes: u.origin_refetched_bytes,
        target_origin_bytes: u.bytes_received,
        resumes,
        pause_p50_ms_at_most: smart_frontend::resume_quantile(&delta, 0.5).unwrap_or(f64::NAN),
        pause_p99_ms_at_most: smart_frontend::resume_quantile(&delta, 0.99).unwrap_or(f64::NAN),
        pause_mean_ms: if resumes > 0 {
            delta("frontend_relay_resume_ms_sum") as f64 / resumes as f64
        } else {
            f64::NAN
        },
        // The maximum is a high-water mark since the front-end started: this cluster's
        // front-end saw this point only.
        pause_max_ms: after
            .get("frontend_relay_resume_ms_max")
            .copied()
            .unwrap_or(0) as f64,
        stalls,
        corrupt,
    })
}

/// The two plots: migration time and the viewers' longest pause against cache size and
/// against viewers, with the thesis's OpenVZ point.
fn plot(dir: &Path, by_cache: &[Point], by_viewers: &[Point]) -> Result<(), String> {
    use plotters::prelude::*;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let one = |file: &str,
               title: &str,
               x_desc: &str,
               pts: &[Point],
               x: fn(&Point) -> f64,
               thesis: &[(f64, f64)]|
     -> Result<(), String> {
        let path = dir.join(file);
        let root = SVGBackend::new(&path, (800, 450)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let xmax = pts
            .iter()
            .map(x)
            .chain(thesis.iter().map(|t| t.0))
            .fold(1.0, f64::max)
            * 1.1;
        let ymax = pts
            .iter()
            .flat_map(|p| [p.total_ms, p.pause_max_ms])
            .chain(thesis.iter().map(|t| t.1))
            .filter(|v| v.is_finite())
            .fold(100.0, f64::max)
            // Room above the data for the legend.
            * 1.6;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("ms")
            .draw()
            .map_err(|e| e.to_string())?;
        let total: Vec<(f64, f64)> = pts.iter().map(|p| (x(p), p.total_ms)).collect();
        let pause: Vec<(f64, f64)> = pts.iter().map(|p| (x(p), p.pause_max_ms)).collect();
        for (label, series, color) in [
            ("migration (drain to new instance listed)", total, BLUE),
            ("viewers' longest pause", pause, RED),
        ] {
            chart
                .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(
                    series
                        .into_iter()
                        .map(|p| Circle::new(p, 4, color.filled())),
                )
                .map_err(|e| e.to_string())?;
        }
        if !thesis.is_empty() {
            chart
                .draw_series(
                    thesis
                        .iter()
                        .map(|p| TriangleMarker::new(*p, 7, BLACK.filled())),
                )
                .map_err(|e| e.to_string())?
                .label("thesis, OpenVZ suspend/resume (every viewer stopped)")
                .legend(|(x, y)| TriangleMarker::new((x + 10, y), 6, BLACK.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    };
    one(
        "migration-vs-cache.svg",
        "Live migration across hosts vs cache size",
        "cache (MB)",
        by_cache,
        |p| p.cache_mb as f64,
        &[(72.0, THESIS_72MB_MS)],
    )?;
    // The thesis found the number of clients has practically no effect (its Figure 5.9):
    // its 72 MB figure at each audience.
    let flat: Vec<(f64, f64)> = by_viewers
        .iter()
        .map(|p| (p.viewers as f64, THESIS_72MB_MS))
        .collect();
    one(
        "migration-vs-viewers.svg",
        "Live migration across hosts vs viewers",
        "viewers",
        by_viewers,
        |p| p.viewers as f64,
        &flat,
    )
}
