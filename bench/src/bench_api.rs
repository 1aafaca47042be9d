//! `smart bench api`: the HTTP API's latency under a steady load, and the dashboard's update
//! delay after a node dies, on a real cluster (real node processes on loopback).
//!
//! - **Latency**: `GET /v1/status` (answered by the node asked) and `GET /v1/services`
//!   (forwarded to the Control and merged with its view of the nodes), each at `--rate`
//!   requests per second for `--duration`, open loop (requests are sent on schedule
//!   whether or not earlier ones were answered, so a slow answer cannot hide the queue it
//!   causes), all to one follower, with `--services` services admitted first.
//! - **Dashboard delay**: headless Chromium (the browser harness of `smart-vod`) opens `/ui`
//!   on a follower; another node is killed with `kill -9`; the delay is from the kill to the
//!   page showing that node dead. It includes the failure detector's `dead_after` (450 ms
//!   by default), which is most of it. Repeated `--kills` times (the node is restarted
//!   in between).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::{ClusterError, ClusterSpec, LocalCluster};
use crate::demo::percentile;

/// `smart bench api` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiBenchArgs {
    /// Requests per second, per route.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// How long each route is loaded.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Services admitted before the load (what `/v1/services` lists).
    #[arg(long, default_value_t = 20)]
    pub services: usize,
    /// Node kills for the dashboard's delay (0: no browser part).
    #[arg(long, default_value_t = 3)]
    pub kills: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Latency of one route.
#[derive(Debug, Clone, Serialize)]
pub struct RouteLatency {
    /// The route.
    pub route: String,
    /// Requests sent.
    pub requests: usize,
    /// Answered 200.
    pub ok: usize,
    /// Achieved rate, requests per second.
    pub rate: f64,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Slowest, milliseconds.
    pub max_ms: f64,
}

/// The benchmark's result.
#[derive(Debug, Clone, Serialize)]
pub struct ApiBench {
    /// Per route.
    pub routes: Vec<RouteLatency>,
    /// Kill → dead on the page, milliseconds, per kill (empty without a browser).
    pub dashboard_delay_ms: Vec<f64>,
    /// Why the browser part did not run, if it did not.
    pub dashboard_skipped: Option<String>,
}

/// The spec of benchmark service `i`, as `POST /v1/services` takes it: a distributor of this
/// binary with an origin that never answers (it serves no viewer; only its admission counts).
pub(crate) fn bench_service(exe: &std::path::Path, i: usize) -> serde_json::Value {
    serde_json::json!({
        "name": format!("bench-{i}"),
        "class": "distributor",
        "command": [exe.display().to_string(), "distributor", "--listen", "{listen}", "--origin", "http://127.0.0.1:9"],
        "per_client_bps": 400_000,
    })
}

/// A failure of the benchmark itself (not of one node), as a [`ClusterError`].
pub(crate) fn other(what: impl std::fmt::Display) -> ClusterError {
    ClusterError::Node {
        node: 0,
        reason: what.to_string(),
    }
}

async fn load(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    rate: u32,
    duration: Duration,
) -> RouteLatency {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::new();
    while started.elapsed() < duration {
        tick.tick().await;
        let (http, url, token) = (http.clone(), url.to_string(), token.to_string());
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let ok = match http.get(&url).bearer_auth(&token).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            (t0.elapsed().as_secs_f64() * 1000.0, ok)
        }));
    }
    let sent = tasks.len();
    let elapsed = started.elapsed().as_secs_f64();
    let mut ms = Vec::new();
    for t in tasks {
        if let Ok((m, true)) = t.await {
            ms.push(m);
        }
    }
    ms.sort_by(f64::total_cmp);
    RouteLatency {
        route: url
            .rsplit_once("/v1")
            .map(|(_, r)| format!("/v1{r}"))
            .unwrap_or_default(),
        requests: sent,
        ok: ms.len(),
        rate: sent as f64 / elapsed,
        p50_ms: percentile(&ms, 50.0),
        p99_ms: percentile(&ms, 99.0),
        max_ms: ms.last().copied().unwrap_or(0.0),
    }
}

/// Kills a node `kills` times while the dashboard is open; the delays.
async fn dashboard(
    c: &mut LocalCluster,
    viewer: u64,
    victim: u64,
    kills: usize,
) -> Result<Vec<f64>, String> {
    use smart_vod::browser::Browser;
    let tools = Browser::find().map_err(|e| e.to_string())?;
    let mut b = Browser::launch(&tools).await.map_err(|e| e.to_string())?;
    b.goto(&format!(
        "{}/ui#token={}",
        c.http_url(viewer),
        c.read_token()
    ))
    .await
    .map_err(|e| e.to_string())?;
    let alive = |v: bool| {
        format!(
            "(() => {{ const r = document.querySelector('#nodes tr[data-node=\"{victim}\"]'); return !!r && r.dataset.alive === '{v}'; }})()"
        )
    };
    let wait = async |b: &mut Browser, expr: &str, within: Duration| -> Result<Duration, String> {
        let t0 = Instant::now();
        loop {
            if b.eval(expr).await.map_err(|e| e.to_string())? == true {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > within {
                return Err(format!("page did not show `{expr}` within {within:?}"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let mut delays = Vec::new();
    for _ in 0..kills {
        wait(&mut b, &alive(true), Duration::from_secs(20)).await?;
        // Kill right after a heartbeat would be luck; a random phase is the honest case.
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..100))).await;
        c.kill(victim).map_err(|e| e.to_string())?;
        let d = wait(&mut b, &alive(false), Duration::from_secs(10)).await?;
        delays.push(d.as_secs_f64() * 1000.0);
        c.start_node(victim).map_err(|e| e.to_string())?;
    }
    b.close().await;
    Ok(delays)
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: ApiBenchArgs) -> Result<ApiBench, ClusterError> {
    let exe = std::env::current_exe().map_err(|e| other(format!("current exe: {e}")))?;
    let mut spec = ClusterSpec::new(&exe, args.nodes.max(3));
    spec.log = "warn".into();
    let mut c = LocalCluster::start(spec)?;
    let all = c.running();
    let (control, _) = c
        .wait_agreed_control(&all, Duration::from_secs(15), |_, _| true)
        .await?;
    let follower = *all.iter().find(|&&n| n != control).expect("3 nodes");
    let victim = *all
        .iter()
        .find(|&&n| n != control && n != follower)
        .expect("3 nodes");
    let base = c.http_url(follower);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(256)
        .build()
        .map_err(other)?;
    for i in 0..args.services {
        let spec = bench_service(&exe, i);
        let r = http
            .post(format!("{base}/v1/services"))
            .bearer_auth(c.admin_token())
            .json(&spec)
            .send()
            .await
            .map_err(other)?;
        if !r.status().is_success() {
            return Err(other(format!(
                "admitting bench-{i}: {}",
                r.text().await.unwrap_or_default()
            )));
        }
    }
    // Let the Control's view catch up (reports every second).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let token = c.read_token().to_string();
    let mut routes = Vec::new();
    for route in ["/v1/status", "/v1/services"] {
        routes.push(
            load(
                &http,
                &format!("{base}{route}"),
                &token,
                args.rate,
                args.duration,
            )
            .await,
        );
    }
    let (dashboard_delay_ms, dashboard_skipped) = if args.kills == 0 {
        (Vec::new(), Some("--kills 0".to_string()))
    } else {
        match dashboard(&mut c, follower, victim, args.kills).await {
            Ok(d) => (d, None),
            Err(e) => (Vec::new(), Some(e)),
        }
    };
    let out = ApiBench {
        routes,
        dashboard_delay_ms,
        dashboard_skipped,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!(
            "HTTP API on n{follower} (a follower; the Control is n{control}), {} services, open loop:",
            args.services
        );
        for r in &out.routes {
            println!(
                "  {:<13} {:>5.0} req/s  {} sent, {} ok  p50 {:.2} ms  p99 {:.2} ms  max {:.1} ms",
                r.route, r.rate, r.requests, r.ok, r.p50_ms, r.p99_ms, r.max_ms
            );
        }
        match &out.dashboard_skipped {
            Some(why) => println!("dashboard: skipped ({why})"),
            None => {
                let mut d = out.dashboard_delay_ms.clone();
                d.sort_by(f64::total_cmp);
                println!(
                    "dashboard: kill -9 of n{victim} → dead on the page: {} (ms; includes dead_after = 450 ms)",
                    d.iter()
                        .map(|x| format!("{x:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    Ok(out)
}
