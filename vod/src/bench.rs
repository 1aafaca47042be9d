//! Benchmarks that print figures: `vod bench streams` (how many paced viewers one distributor
//! process sustains, against nginx with `limit_rate` under the same load generator),
//! `vod bench density` (the thesis's §5.5 isolation/density experiment: many distributors
//! with full caches on one node while more are migrated beside them) and `vod bench handoff`
//! (workload-level pre-copy migration of a distributor with viewers).
//!
//! All run the origin and the load generator in this process and each server (distributor
//! or nginx) as a child process, so CPU is measured per process from `/proc` (utime + stime,
//! the kernel's tick sampling).
//!
//! `streams` runs, one after the other with the same load generator and video: our
//! distributor, our distributor with `--cork`, nginx with `tcp_nopush off` and nginx with
//! `tcp_nopush on`. The pairs matter because of how Linux accounts CPU: on loopback (64 KB
//! MSS) every paced write is a partial segment; a corked one (`TCP_CORK`/`MSG_MORE`) is sent
//! later by the kernel's probe timer in softirq and charged to whatever process runs then, so
//! corking lowers the server's measured CPU without lowering the work. Ratios are reported
//! like for like and across.
//!
//! ## Layout
//! - [`StreamsArgs`], [`streams`] (`run_distributor`, `run_nginx`, `nginx_conf`).
//! - [`DensityArgs`], [`density`]; [`HandoffArgs`], [`handoff`].
//! - helpers: child distributors (`spawn_distributor`), `/proc` CPU and RSS;
//!   [`crate::bench_hls`] uses them too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::distributor::bind;
use crate::http::Url;
use crate::origin::{Origin, Video};
use crate::ts::VideoParams;
use crate::viewer::{self, LoadConfig, Shared, ViewerConfig};
use crate::workload;
use smart_proto::workload::{Usage, WorkloadClient, WorkloadError, WorkloadRequest};

/// Bench failure.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// I/O.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Setup failed.
    #[error("{0}")]
    Setup(String),
    /// Control API.
    #[error(transparent)]
    Control(#[from] WorkloadError),
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> BenchError + '_ {
    move |e| BenchError::Setup(format!("{what}: {e}"))
}

/// CPU seconds (user + system) of a process.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

pub(crate) fn rss_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s[s.rfind(')')? + 2..].to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Pages of TCP memory in use now (`/proc/net/sockstat`), and the kernel's `tcp_mem`
/// pressure threshold (its second value), both in 4 KiB pages.
fn tcp_mem_pages() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    let mem = loop {
        if it.next()? == "mem" {
            break it.next()?.parse().ok()?;
        }
    };
    let lim = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem").ok()?;
    Some((mem, lim.split_whitespace().nth(1)?.parse().ok()?))
}

/// Samples TCP memory every second until `stop`; returns the peak (MB) and the pressure
/// threshold (MB).
fn sample_tcp_mem(stop: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<Value> {
    tokio::spawn(async move {
        let mut stop = stop;
        let (mut peak, mut lim) = (0u64, 0u64);
        loop {
            if let Some((m, l)) = tcp_mem_pages() {
                peak = peak.max(m);
                lim = l;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        json!({"peak_mb": peak as f64 * 4096.0 / 1e6, "pressure_mb": lim as f64 * 4096.0 / 1e6})
    })
}

/// A distributor child process.
pub(crate) struct ChildDistributor {
    child: Child,
    pub(crate) pid: u32,
    pub(crate) url: String,
    pub(crate) control: PathBuf,
}

pub(crate) async fn spawn_distributor(
    exe: &Path,
    origin: &str,
    control: PathBuf,
    extra: &[String],
) -> Result<ChildDistributor, BenchError> {
    let mut child = Command::new(exe)
        .arg("distributor")
        .args(["--listen", "127.0.0.1:0", "--origin", origin, "--control"])
        .arg(&control)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(setup("spawn distributor"))?;
    let pid = child
        .id()
        .ok_or_else(|| BenchError::Setup("distributor exited".into()))?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::Setup("no stdout".into()))?;
    let mut lines = BufReader::new(out).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .map_err(setup("distributor start"))??
        .ok_or_else(|| BenchError::Setup("distributor printed nothing".into()))?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| BenchError::Setup(format!("unexpected: {line}")))?;
    for _ in 0..200 {
        if control.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(ChildDistributor {
        child,
        pid,
        url: format!("http://{addr}"),
        control,
    })
}

impl ChildDistributor {
    pub(crate) async fn stop(mut self) {
        if let Ok(mut c) = WorkloadClient::connect(&self.control, Duration::from_secs(5)).await {
            let _ = c.stop().await;
        }
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

pub(crate) async fn start_origin(
    name: &str,
    video: Video,
) -> Result<(Arc<Origin>, String), BenchError> {
    let mut o = Origin::new();
    o.add(name, video);
    let o = Arc::new(o);
    let l = bind("127.0.0.1:0".parse().map_err(setup("addr"))?)?;
    let addr = l.local_addr()?;
    tokio::spawn(o.clone().serve(l));
    Ok((o, format!("http://{addr}")))
}

/// Settings of `vod bench streams`.
#[derive(Debug, Clone)]
pub struct StreamsArgs {
    /// Viewers.
    pub clients: usize,
    /// Video bitrate.
    pub bitrate_bps: u64,
    /// Steady-state time after the ramp.
    pub duration: Duration,
    /// Ramp time (viewers join evenly).
    pub ramp: Duration,
    /// Prefetch burst in ms of video (distributor and nginx `limit_rate_after`).
    pub prefetch_ms: u64,
    /// Pacing tick of the distributor.
    pub tick_ms: u64,
    /// Also run nginx when installed.
    pub nginx: bool,
    /// Also run the distributor with `--cork` (MSG_MORE, like nginx's `tcp_nopush`), to
    /// compare it with nginx's `tcp_nopush on` like for like.
    pub cork: bool,
    /// The `vod` executable (to start distributors).
    pub exe: PathBuf,
}

fn load_figures(
    reports: &[viewer::ViewerReport],
    shared: &Shared,
    cpu_s: f64,
    secs: f64,
    rss: Option<f64>,
) -> Value {
    let s = viewer::summarize(reports, shared);
    let mut v = serde_json::to_value(&s).unwrap_or(Value::Null);
    let n = reports.len().max(1) as f64;
    v["server_cpu_s"] = json!(cpu_s);
    v["server_cpu_pct"] = json!(cpu_s / secs * 100.0);
    v["cpu_us_per_viewer_s"] = json!(cpu_s / secs / n * 1e6);
    if let Some(r) = rss {
        v["server_rss_mb"] = json!(r);
    }
    v
}

/// `vod bench streams`: one JSON object with the distributor run and (if installed) nginx.
pub async fn streams(a: StreamsArgs) -> Result<Value, BenchError> {
    let dir = tempfile::tempdir()?;
    // At least 20 minutes, so the 20 % window (4 min) spans the viewers' spread as it does
    // for real videos (GloVE's 2 h video has a 24 min window).
    let video_ms = ((a.ramp + a.duration).as_millis() as u64 + 60_000).max(1_200_000);
    let params = VideoParams {
        bitrate_bps: a.bitrate_bps,
        duration_ms: video_ms,
    };
    let video = Video::generated(params).map_err(setup("generate"))?;
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("v.ts"), &video.data)?;
    let (origin, origin_url) = start_origin("v.ts", video).await?;
    let prefetch_bytes = a.bitrate_bps / 8 * a.prefetch_ms / 1000;
    let load = |url: String| LoadConfig {
        viewer: ViewerConfig {
            url: Url::parse(&url).unwrap_or_else(|_| Url {
                host: "127.0.0.1".into(),
                port: 1,
                path: "/".into(),
            }),
            frontend: None,
            bitrate_bps: a.bitrate_bps,
            prefetch_bytes,
            start_buffer: Duration::from_millis(1000),
            start_offset: 0,
        },
        clients: a.clients,
        ramp: a.ramp,
        duration: a.ramp + a.duration,
    };
    let base = vec![
        "--prefetch-ms".to_string(),
        a.prefetch_ms.to_string(),
        "--tick-ms".into(),
        a.tick_ms.to_string(),
    ];
    let mut out = run_distributor(&a, &origin, &origin_url, dir.path(), &base, &load).await?;
    out["bitrate_bps"] = json!(a.bitrate_bps);
    // Every viewer is a socket in the server and one in this process: past the open-file
    // limit (which only CAP_SYS_RESOURCE can raise beyond its hard value) connects fail.
    out["nofile_limit"] = json!(crate::http::nofile_limit());
    let ours = out["cpu_us_per_viewer_s"].as_f64();
    let mut ours_cork = None;
    if a.cork {
        let mut extra = base.clone();
        extra.push("--cork".into());
        let c = run_distributor(&a, &origin, &origin_url, dir.path(), &extra, &load).await?;
        ours_cork = c["cpu_us_per_viewer_s"].as_f64();
        out["distributor_cork"] = c;
    }
    if a.nginx {
        match which("nginx") {
            Some(nginx) => {
                // nginx twice: as configured by default (tcp_nopush off: every write leaves
                // in the writer's context, as ours do) and with tcp_nopush on (TCP_CORK: a
                // paced write smaller than the MSS, i.e. every one on loopback's 64 KB MSS,
                // waits in the socket until the kernel's 200 ms probe timer sends it, in
                // softirq, charged to whatever process is running then). Ratios are nginx's
                // CPU over ours, like for like (plain vs plain, corked vs corked), and
                // corked nginx over plain ours.
                let ratio = |n: &Value, d: Option<f64>| match (n["cpu_us_per_viewer_s"].as_f64(), d)
                {
                    (Some(nc), Some(dc)) => json!(nc / dc.max(1e-9)),
                    _ => Value::Null,
                };
                let n = run_nginx(&nginx, dir.path(), &a, prefetch_bytes, false, &load).await?;
                out["nginx_cpu_ratio"] = ratio(&n, ours);
                out["nginx"] = n;
                let n = run_nginx(&nginx, dir.path(), &a, prefetch_bytes, true, &load).await?;
                out["nginx_nopush_vs_plain_ratio"] = ratio(&n, ours);
                if ours_cork.is_some() {
                    out["nginx_nopush_cpu_ratio"] = ratio(&n, ours_cork);
                }
                out["nginx_nopush"] = n;
            }
            None => println!("nginx comparison skipped: nginx not installed"),
        }
    }
    Ok(out)
}

/// One load run against a distributor child started with `extra` arguments.
async fn run_distributor(
    a: &StreamsArgs,
    origin: &Origin,
    origin_url: &str,
    dir: &Path,
    extra: &[String],
    load: &dyn Fn(String) -> LoadConfig,
) -> Result<Value, BenchError> {
    let streams0 = origin
        .stats
        .streams
        .load(std::sync::atomic::Ordering::Relaxed);
    let sock = dir.join(format!("d{}.sock", extra.len()));
    let d = spawn_distributor(&a.exe, origin_url, sock, extra).await?;
    let (cpu0, self0, t0) = (
        cpu_seconds(d.pid).unwrap_or(0.0),
        cpu_seconds(std::process::id()).unwrap_or(0.0),
        Instant::now(),
    );
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tcp = sample_tcp_mem(stop_rx);
    let reports = viewer::run_load(&load(format!("{}/v.ts", d.url)), shared.clone()).await;
    let _ = stop_tx.send(true);
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(d.pid).unwrap_or(0.0) - cpu0;
    let gen_cpu = cpu_seconds(std::process::id()).unwrap_or(0.0) - self0;
    let rss = rss_mb(d.pid);
    let usage_raw: serde_json::Value = WorkloadClient::connect(&d.control, Duration::from_secs(5))
        .await?
        .call(&WorkloadRequest::Usage)
        .await?;
    let usage: Usage = serde_json::from_value(usage_raw.clone()).map_err(setup("usage"))?;
    d.stop().await;
    let mut out = load_figures(&reports, &shared, cpu, secs, rss);
    out["origin_streams"] = json!(usage.origin_streams);
    out["distributor_usage"] = usage_raw;
    out["origin_streams_seen_by_origin"] = json!(
        origin
            .stats
            .streams
            .load(std::sync::atomic::Ordering::Relaxed)
            - streams0
    );
    out["loadgen_cpu_pct"] = json!(gen_cpu / secs * 100.0);
    out["seconds"] = json!(secs);
    out["distributor_args"] = json!(extra);
    out["tcp_mem"] = tcp.await.unwrap_or(Value::Null);
    Ok(out)
}

/// Finds an executable on PATH (or in sbin directories).
pub fn which(name: &str) -> Option<PathBuf> {
    crate::tools::which(name)
}

async fn run_nginx(
    nginx: &Path,
    dir: &Path,
    a: &StreamsArgs,
    prefetch_bytes: u64,
    nopush: bool,
    load: &dyn Fn(String) -> LoadConfig,
) -> Result<Value, BenchError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let d = dir.display();
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;\n"
    } else {
        ""
    };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let conf = nginx_conf(
        user,
        d,
        port,
        workers,
        a.bitrate_bps / 8,
        prefetch_bytes,
        nopush,
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf_path)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(setup("spawn nginx"))?;
    let pid = child
        .id()
        .ok_or_else(|| BenchError::Setup("nginx exited".into()))?;
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !up {
        let _ = child.kill().await;
        let log = std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default();
        return Err(BenchError::Setup(format!("nginx did not start: {log}")));
    }
    let cpu_all = || -> f64 {
        std::iter::once(pid)
            .chain(children_of(pid))
            .filter_map(cpu_seconds)
            .sum()
    };
    let rss_all = || -> f64 {
        std::iter::once(pid)
            .chain(children_of(pid))
            .filter_map(rss_mb)
            .sum()
    };
    let (c0, self0, t0) = (
        cpu_all(),
        cpu_seconds(std::process::id()).unwrap_or(0.0),
        Instant::now(),
    );
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tcp = sample_tcp_mem(stop_rx);
    let reports = viewer::run_load(
        &load(format!("http://127.0.0.1:{port}/v.ts")),
        shared.clone(),
    )
    .await;
    let _ = stop_tx.send(true);
    let secs = t0.elapsed().as_secs_f64();
    let (cpu, rss) = (cpu_all() - c0, rss_all());
    let gen_cpu = cpu_seconds(std::process::id()).unwrap_or(0.0) - self0;
    // SAFETY: signalling our own child process by its id.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    let mut v = load_figures(&reports, &shared, cpu, secs, Some(rss));
    v["workers"] = json!(workers);
    v["loadgen_cpu_pct"] = json!(gen_cpu / secs * 100.0);
    v["seconds"] = json!(secs);
    v["tcp_mem"] = tcp.await.unwrap_or(Value::Null);
    v["config"] = json!(std::fs::read_to_string(&conf_path).unwrap_or_default());
    Ok(v)
}

/// nginx configured as its documentation recommends for paced static video: one worker per
/// core, `sendfile` (straight from the page cache), `tcp_nopush` as asked,
/// `limit_rate` at the bitrate after `limit_rate_after` bytes (the same prefetch as the
/// distributor's; nginx itself lets a response run up to 1 s ahead), an open-file cache, no
/// access log, `reuseport` listeners (one accept queue per worker) with a large backlog, and
/// enough connections and descriptors per worker for every viewer.
fn nginx_conf(
    user: &str,
    dir: impl std::fmt::Display,
    port: u16,
    workers: usize,
    rate_bytes: u64,
    prefetch_bytes: u64,
    nopush: bool,
) -> String {
    let d = dir;
    let nopush = if nopush { "on" } else { "off" };
    format!(
        "{user}worker_processes {workers};\nworker_rlimit_nofile 100000;\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\n\
         error_log {d}/nginx-error.log warn;\nevents {{ worker_connections 50000; multi_accept on; }}\n\
         http {{\n  access_log off;\n  default_type video/mp2t;\n  sendfile on;\n  tcp_nopush {nopush};\n\
           open_file_cache max=100 inactive=60s;\n\
           client_body_temp_path {d}/t1; proxy_temp_path {d}/t2; fastcgi_temp_path {d}/t3; uwsgi_temp_path {d}/t4; scgi_temp_path {d}/t5;\n\
           server {{\n    listen 127.0.0.1:{port} backlog=8192 reuseport;\n    root {d}/www;\n\
             location / {{ limit_rate {rate_bytes}; limit_rate_after {prefetch_bytes}; }}\n  }}\n}}\n"
    )
}

/// Settings of `vod bench handoff`.
#[derive(Debug, Clone)]
pub struct HandoffArgs {
    /// Cache to migrate, in MB (10^6 bytes); the video is 5× longer (20 % window).
    pub cache_mb: u64,
    /// Viewers.
    pub clients: usize,
    /// Video bitrate.
    pub bitrate_bps: u64,
    /// Prefetch burst of the distributors, ms of video.
    pub prefetch_ms: u64,
    /// The `vod` executable.
    pub exe: PathBuf,
}

/// `vod bench handoff`: distributor A with a full cache and viewers; B restores from A while
/// A serves (pre-copy), then A hands its viewers over (they follow A's 307 to B and resume
/// with Range at the exact byte). One JSON object.
pub async fn handoff(a: HandoffArgs) -> Result<Value, BenchError> {
    let dir = tempfile::tempdir()?;
    let window = a.cache_mb * 1_000_000;
    let size = window * 5;
    let duration_ms = (size as u128 * 8000 / a.bitrate_bps as u128) as u64;
    let video = Video::generated(VideoParams {
        bitrate_bps: a.bitrate_bps,
        duration_ms,
    })
    .map_err(setup("generate"))?;
    let (_origin, origin_url) = start_origin("v.ts", video).await?;
    // A pre-fills its window so that the migrated cache is the full 72 MB at once.
    let extra = vec![
        "--prefetch-ms".into(),
        a.prefetch_ms.to_string(),
        "--prefill".into(),
    ];
    let da = spawn_distributor(&a.exe, &origin_url, dir.path().join("a.sock"), &extra).await?;
    let db = spawn_distributor(&a.exe, &origin_url, dir.path().join("b.sock"), &extra).await?;
    let load = LoadConfig {
        viewer: ViewerConfig {
            url: Url::parse(&format!("{}/v.ts", da.url)).map_err(BenchError::Setup)?,
            frontend: None,
            bitrate_bps: a.bitrate_bps,
            prefetch_bytes: 0,
            start_buffer: Duration::from_millis(1000),
            start_offset: 0,
        },
        clients: a.clients,
        ramp: Duration::from_millis(500),
        duration: Duration::from_secs(12),
    };
    let shared = Arc::new(Shared::default());
    let run = {
        let shared = shared.clone();
        tokio::spawn(async move { viewer::run_load(&load, shared).await })
    };
    // Wait for a full cache (the fetcher reads ahead to the window) and settled viewers.
    let mut ca = WorkloadClient::connect(&da.control, Duration::from_secs(5)).await?;
    let t_wait = Instant::now();
    let mut usage_a = ca.usage().await?;
    while (usage_a.cache_bytes < window * 99 / 100 || t_wait.elapsed() < Duration::from_secs(4))
        && t_wait.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        usage_a = ca.usage().await?;
    }
    let since_base = shared.base.elapsed();
    let report = workload::migrate(&da.control, &db.control, &db.url).await?;
    let reports = run.await.map_err(setup("load task"))?;
    let last_resume = shared.last_resume();
    let total_ms = last_resume.saturating_sub(since_base).as_secs_f64() * 1000.0;
    let usage_b = WorkloadClient::connect(&db.control, Duration::from_secs(5))
        .await?
        .usage()
        .await?;
    da.stop().await;
    db.stop().await;
    let s = viewer::summarize(&reports, &shared);
    let buffered_2s: Vec<&viewer::ViewerReport> = reports
        .iter()
        .filter(|r| r.buffered_at_disconnect_ms.iter().all(|b| *b >= 2000.0))
        .collect();
    let mut min_buf: Vec<f64> = reports
        .iter()
        .flat_map(|r| r.buffered_at_disconnect_ms.iter().copied())
        .collect();
    Ok(json!({
        "clients": s.clients,
        "cache_bytes_before": usage_a.cache_bytes,
        "cache_bytes_copied": report.restore.bytes,
        "restore_ms": report.restore.ms,
        "handoff_ms": report.handoff.ms,
        "total_ms": total_ms,
        "viewers_handed_off": report.handoff.viewers,
        "reconnects": s.reconnects,
        "gap_p50_ms": s.gap_p50_ms,
        "gap_p99_ms": s.gap_p99_ms,
        "gap_max_ms": s.gap_max_ms,
        "silence_p50_ms": s.silence_p50_ms,
        "silence_p99_ms": s.silence_p99_ms,
        "stalls": s.stalls,
        "stalls_buffered_2s": buffered_2s.iter().map(|r| r.stalls as u64).sum::<u64>(),
        "viewers_buffered_2s": buffered_2s.len(),
        "buffer_at_handoff_p1_ms": viewer::percentile(&mut min_buf, 0.01),
        "corrupt": s.corrupt,
        "refused": s.refused,
        "target_origin_streams": usage_b.origin_streams,
        "target_clients": usage_b.clients,
        "bitrate_bps": a.bitrate_bps,
    }))
}

/// Settings of `vod bench density`.
#[derive(Debug, Clone)]
pub struct DensityArgs {
    /// Distributors observed (each serves its own video).
    pub distributors: usize,
    /// Distributors migrated beside them (each to a new, empty target) while they serve.
    pub migrate: usize,
    /// Cache of each distributor, MB (10^6 bytes), pre-filled; videos are 5× longer.
    pub cache_mb: u64,
    /// Viewers per distributor.
    pub viewers: usize,
    /// Video bitrate.
    pub bitrate_bps: u64,
    /// Time from the last viewer's start to the migrations.
    pub before: Duration,
    /// Time after the migrations.
    pub after: Duration,
    /// The `vod` executable.
    pub exe: PathBuf,
}

fn peak_rss_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

fn stats_of(v: &[f64]) -> Value {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let max = v.iter().copied().fold(0.0, f64::max);
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    json!({"mean": mean, "min": if v.is_empty() { 0.0 } else { min }, "max": max})
}

/// `vod bench density`: the thesis's isolation/density experiment (§5.5) on one node.
/// `distributors` distributor processes, each with a pre-filled cache of `cache_mb` for its
/// own video and `viewers` viewers, are observed while `migrate` more (same size, with their
/// own viewers) are live-migrated beside them, all at once (pre-copy restore into an empty
/// target, then handoff). One JSON object: QoE of the observed viewers and of the migrated
/// ones, CPU and RSS per observed distributor, and the migrations.
pub async fn density(a: DensityArgs) -> Result<Value, BenchError> {
    let dir = tempfile::tempdir()?;
    let window = a.cache_mb * 1_000_000;
    let size = window * 5;
    let duration_ms = (size as u128 * 8000 / a.bitrate_bps.max(1) as u128) as u64;
    let video = Video::generated(VideoParams {
        bitrate_bps: a.bitrate_bps,
        duration_ms,
    })
    .map_err(setup("generate"))?;
    let total = a.distributors + a.migrate;
    // One video per distributor; the bytes are shared (Bytes), the names and caches are not.
    let mut o = Origin::new();
    for i in 0..total {
        o.add(&format!("v{i}.ts"), video.clone());
    }
    let origin = Arc::new(o);
    let l = bind("127.0.0.1:0".parse().map_err(setup("addr"))?)?;
    let origin_url = format!("http://{}", l.local_addr()?);
    tokio::spawn(origin.clone().serve(l));
    let extra = vec![
        "--window-mb".to_string(),
        a.cache_mb.to_string(),
        "--prefill".into(),
    ];
    let mut ds = Vec::new();
    for i in 0..total {
        let sock = dir.path().join(format!("d{i}.sock"));
        ds.push(spawn_distributor(&a.exe, &origin_url, sock, &extra).await?);
    }
    let mut targets = Vec::new();
    for i in 0..a.migrate {
        let sock = dir.path().join(format!("t{i}.sock"));
        targets.push(spawn_distributor(&a.exe, &origin_url, sock, &extra[..2]).await?);
    }
    // A HEAD opens each video (and starts its fetcher); the viewers come once every cache
    // is full, so that their start-up is the steady state's, not the pre-fill's.
    for (i, d) in ds.iter().enumerate() {
        let url = Url::parse(&format!("{}/v{i}.ts", d.url)).map_err(BenchError::Setup)?;
        crate::http::head(&url, Duration::from_secs(10))
            .await
            .map_err(setup("HEAD"))?;
    }
    let t_fill = Instant::now();
    let mut filled = false;
    while t_fill.elapsed() < Duration::from_secs(120) {
        let mut all = true;
        for d in &ds {
            let u = WorkloadClient::connect(&d.control, Duration::from_secs(5))
                .await?
                .usage()
                .await?;
            all &= u.cache_bytes >= window * 98 / 100;
        }
        if all {
            filled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fill_ms = t_fill.elapsed().as_secs_f64() * 1000.0;
    let ramp = Duration::from_secs(2);
    let run_for = ramp + a.before + a.after;
    let mut loads = Vec::new();
    for (i, d) in ds.iter().enumerate() {
        let cfg = LoadConfig {
            viewer: ViewerConfig {
                url: Url::parse(&format!("{}/v{i}.ts", d.url)).map_err(BenchError::Setup)?,
                frontend: None,
                bitrate_bps: a.bitrate_bps,
                prefetch_bytes: 0,
                start_buffer: Duration::from_millis(1000),
                start_offset: 0,
            },
            clients: a.viewers,
            ramp,
            duration: run_for,
        };
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        loads.push((
            shared,
            tokio::spawn(async move { viewer::run_load(&cfg, sh).await }),
        ));
    }
    tokio::time::sleep(ramp + a.before).await;
    // Measure the observed distributors from here: the migrations run beside them.
    let observed = &ds[..a.distributors];
    let cpu0: Vec<f64> = observed
        .iter()
        .map(|d| cpu_seconds(d.pid).unwrap_or(0.0))
        .collect();
    let t0 = Instant::now();
    let migrations: Vec<_> = ds[a.distributors..]
        .iter()
        .zip(&targets)
        .map(|(src, dst)| {
            let (s, t, u) = (src.control.clone(), dst.control.clone(), dst.url.clone());
            tokio::spawn(async move { workload::migrate(&s, &t, &u).await })
        })
        .collect();
    let mut reports_m = Vec::new();
    for m in migrations {
        let r = m.await.map_err(setup("migration task"))??;
        reports_m.push(json!({
            "restore_ms": r.restore.ms,
            "bytes_copied": r.restore.bytes,
            "handoff_ms": r.handoff.ms,
            "viewers_handed_off": r.handoff.viewers,
            "total_ms": r.total_ms,
        }));
    }
    let mut qoe_obs = Vec::new();
    let mut qoe_mig = Vec::new();
    let mut reports_obs = Vec::new();
    let mut reports_mig = Vec::new();
    for (i, (shared, task)) in loads.into_iter().enumerate() {
        let r = task.await.map_err(setup("load task"))?;
        let s = viewer::summarize(&r, &shared);
        if i < a.distributors {
            qoe_obs.push(s);
            reports_obs.extend(r);
        } else {
            qoe_mig.push(s);
            reports_mig.extend(r);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu_pct: Vec<f64> = observed
        .iter()
        .zip(&cpu0)
        .map(|(d, c0)| (cpu_seconds(d.pid).unwrap_or(0.0) - c0) / secs * 100.0)
        .collect();
    let rss: Vec<f64> = observed.iter().filter_map(|d| rss_mb(d.pid)).collect();
    let peak: Vec<f64> = observed.iter().filter_map(|d| peak_rss_mb(d.pid)).collect();
    let mut cache = Vec::new();
    for d in observed {
        cache.push(
            WorkloadClient::connect(&d.control, Duration::from_secs(5))
                .await?
                .usage()
                .await?
                .cache_bytes as f64
                / 1e6,
        );
    }
    let target_rss: Vec<f64> = targets.iter().filter_map(|d| rss_mb(d.pid)).collect();
    let sum = |q: &[viewer::QoeSummary], f: fn(&viewer::QoeSummary) -> u64| -> u64 {
        q.iter().map(f).sum()
    };
    let gaps = {
        let mut g: Vec<f64> = reports_mig.iter().flat_map(|r| r.gaps_ms.clone()).collect();
        json!({"p50": viewer::percentile(&mut g, 0.5), "p99": viewer::percentile(&mut g, 0.99)})
    };
    let mut startups: Vec<f64> = reports_obs.iter().filter_map(|r| r.startup_ms).collect();
    for d in ds.into_iter().chain(targets) {
        d.stop().await;
    }
    Ok(json!({
        "distributors": a.distributors,
        "migrated": a.migrate,
        "viewers_per_distributor": a.viewers,
        "cache_mb": a.cache_mb,
        "bitrate_bps": a.bitrate_bps,
        "caches_filled": filled,
        "fill_ms": fill_ms,
        "measured_s": secs,
        "observed": {
            "viewers": reports_obs.len(),
            "stalls": sum(&qoe_obs, |q| q.stalls),
            "corrupt": qoe_obs.iter().map(|q| q.corrupt).sum::<usize>(),
            "refused": qoe_obs.iter().map(|q| q.refused).sum::<usize>(),
            "startup_p99_ms": viewer::percentile(&mut startups, 0.99),
            "cpu_pct_per_distributor": stats_of(&cpu_pct),
            "cpu_us_per_viewer_s": cpu_pct.iter().sum::<f64>() * 1e4 / reports_obs.len().max(1) as f64,
            "rss_mb_per_distributor": stats_of(&rss),
            "peak_rss_mb_per_distributor": stats_of(&peak),
            "cache_mb_per_distributor": stats_of(&cache),
        },
        "migrated_viewers": {
            "viewers": reports_mig.len(),
            "stalls": sum(&qoe_mig, |q| q.stalls),
            "corrupt": qoe_mig.iter().map(|q| q.corrupt).sum::<usize>(),
            "reconnects": sum(&qoe_mig, |q| q.reconnects),
            "gap_ms": gaps,
        },
        "migrations": reports_m,
        "target_rss_mb": stats_of(&target_rss),
    }))
}
