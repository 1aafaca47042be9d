//! `smart bench desired`: the desired-state log on a real cluster (node processes on
//! loopback, every node a voter).
//!
//! - **Write latency**: `POST /v1/services` on a follower, each answered only once the
//!   service is committed to the log and placed (forwarded to the Control, written, then
//!   decided): `--services` admissions one after the other, p50/p99.
//! - **Whole-cluster restart**: every node stopped (SIGTERM), every node started again;
//!   the time from the first start until `/v1/services` lists every admitted service again,
//!   restored from the log. Repeated `--restarts` times.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bench_api::{bench_service, other};
use crate::cluster::{ClusterError, ClusterSpec, LocalCluster};
use crate::demo::percentile;

/// `smart bench desired` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DesiredBenchArgs {
    /// Nodes (voters of the log).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Services admitted (one write each).
    #[arg(long, default_value_t = 30)]
    pub services: usize,
    /// Whole-cluster restarts.
    #[arg(long, default_value_t = 3)]
    pub restarts: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct DesiredBench {
    /// Voters.
    pub nodes: usize,
    /// Admissions timed.
    pub admissions: usize,
    /// Admission (commit and placement) latency, median, ms.
    pub admit_p50_ms: f64,
    /// 99th percentile, ms.
    pub admit_p99_ms: f64,
    /// Whole-cluster restart to every service listed again, per restart, ms.
    pub restart_ms: Vec<f64>,
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: DesiredBenchArgs) -> Result<DesiredBench, ClusterError> {
    let exe = std::env::current_exe().map_err(|e| other(format!("current exe: {e}")))?;
    let mut spec = ClusterSpec::new(&exe, args.nodes.max(3));
    spec.log = "warn".into();
    let mut c = LocalCluster::start(spec)?;
    let all = c.running();
    let (control, _) = c
        .wait_agreed_control(&all, Duration::from_secs(15), |_, _| true)
        .await?;
    let follower = *all.iter().find(|&&n| n != control).expect("3 nodes");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(other)?;
    let mut admit = Vec::new();
    for i in 0..args.services {
        let spec = bench_service(&exe, i);
        let t0 = Instant::now();
        let r = http
            .post(format!("{}/v1/services", c.http_url(follower)))
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
        admit.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    admit.sort_by(f64::total_cmp);
    let mut restart_ms = Vec::new();
    for _ in 0..args.restarts {
        for &n in &all {
            c.terminate(n)?;
        }
        for &n in &all {
            c.wait_exit(n, Duration::from_secs(30))?;
        }
        let t0 = Instant::now();
        for &n in &all {
            c.start_node(n)?;
        }
        let deadline = t0 + Duration::from_secs(60);
        loop {
            let listed = http
                .get(format!("{}/v1/services", c.http_url(follower)))
                .bearer_auth(c.read_token())
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success());
            let n = match listed {
                Some(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["services"].as_array().map(|a| a.len()))
                    .unwrap_or(0),
                None => 0,
            };
            if n >= args.services {
                break;
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!(
                        "{} services back after a whole-cluster restart ({n} are)",
                        args.services
                    ),
                    after: Duration::from_secs(60),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        restart_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let b = DesiredBench {
        nodes: all.len(),
        admissions: admit.len(),
        admit_p50_ms: percentile(&admit, 50.0),
        admit_p99_ms: percentile(&admit, 99.0),
        restart_ms,
    };
    if args.json {
        println!("{}", serde_json::to_string(&b).map_err(other)?);
    } else {
        println!(
            "desired-state log on {} voters: admission (commit + placement) p50 {:.1} ms, p99 {:.1} ms over {}; whole-cluster restart to all {} services back: {}",
            b.nodes,
            b.admit_p50_ms,
            b.admit_p99_ms,
            b.admissions,
            args.services,
            b.restart_ms
                .iter()
                .map(|m| format!("{m:.0} ms"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(b)
}
