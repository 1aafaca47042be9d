//! `smart demo` and `smart bench failover`: a real cluster of `smart node` processes on
//! loopback, a Control killed with `kill -9`, and the failover time measured from the kill
//! until **every** surviving node reports the same new Control. The demo itself (the
//! Smart-GloVE case study) is in [`crate::case_study`].

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::{ClusterError, ClusterSpec, LocalCluster};

/// `smart demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Number of nodes (the last one is the front-end and runs no services).
    #[arg(long, default_value_t = 6)]
    pub nodes: usize,
    /// Number of viewers.
    #[arg(long, default_value_t = 200)]
    pub viewers: usize,
    /// Number of videos (popularity is Zipf, s = 1).
    #[arg(long, default_value_t = 8)]
    pub videos: usize,
    /// Length of the run; the Control is killed at 25 %, a service node at 45 %, another
    /// node is drained at 65 %.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// NIC bandwidth each node offers, Mbit/s (small enough for admission to matter).
    #[arg(long, default_value_t = 100)]
    pub nic_mbps: u64,
    /// Print one JSON object at the end instead of the narrative.
    #[arg(long)]
    pub json: bool,
    /// Serve a real H.264 + AAC video (made once with ffmpeg, cached) instead of generated
    /// MPEG-TS: what a real player (the front-end's `/play/{video}` page) shows.
    #[arg(long)]
    pub real_video: bool,
    /// The admission estimator of every node (`[admission] estimator`): chernoff (the
    /// default), empirical, gaussian, peak or mean. `peak` admits by the profile's maximum,
    /// the deterministic baseline the thesis compares against.
    #[arg(long)]
    pub estimator: Option<String>,
    /// Run on hosts (root): every node, the origin and the viewers in a network namespace
    /// of its own on a bridge (own addresses, multicast across the bridge), with a second
    /// front-end sharing the viewers' address through keepalived. Adds two faults: a
    /// service host cut off the network that then heals (at 50 %), and the death of the
    /// front-end the viewers use (at 80 %).
    #[arg(long)]
    pub netns: bool,
}

/// How the Control's node is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StopKind {
    /// `kill -9`: the others detect the failure.
    Kill,
    /// `SIGTERM`: the Control hands over to a successor.
    Term,
}

/// `smart bench failover` options.
#[derive(Debug, Clone, clap::Args)]
pub struct FailoverBenchArgs {
    /// Number of trials.
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// How the Control's node is stopped.
    #[arg(long, value_enum, default_value_t = StopKind::Kill)]
    pub stop: StopKind,
    /// Run the cluster in majority mode (default: available).
    #[arg(long)]
    pub majority: bool,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// One failover.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    /// The killed Control.
    pub killed: u64,
    /// Its epoch.
    pub old_epoch: u64,
    /// The new Control.
    pub new_control: u64,
    /// Its epoch.
    pub new_epoch: u64,
    /// Signal to every survivor reporting the new Control, and that Control acting, in
    /// milliseconds.
    pub failover_ms: f64,
}

/// Kills the current Control and measures until every survivor agrees on a new one.
pub async fn kill_control_and_measure(
    cluster: &mut LocalCluster,
) -> Result<Failover, ClusterError> {
    stop_control_and_measure(cluster, StopKind::Kill).await
}

/// Stops the current Control's node (`how`) and measures until every survivor agrees on a
/// new one and that one acts (its `control_acting` counter is 1).
pub async fn stop_control_and_measure(
    cluster: &mut LocalCluster,
    how: StopKind,
) -> Result<Failover, ClusterError> {
    let running = cluster.running();
    let (old, old_epoch) = cluster
        .wait_agreed_control(&running, Duration::from_secs(10), |_, _| true)
        .await?;
    let t0 = Instant::now();
    match how {
        StopKind::Kill => cluster.kill(old)?,
        StopKind::Term => cluster.terminate(old)?,
    }
    let survivors: Vec<u64> = running.into_iter().filter(|&n| n != old).collect();
    let (new_control, new_epoch) = cluster
        .wait_agreed_control(&survivors, Duration::from_secs(10), |n, e| {
            n != old && e > old_epoch
        })
        .await?;
    cluster
        .wait_acting(new_control, Duration::from_secs(10))
        .await?;
    let failover_ms = t0.elapsed().as_secs_f64() * 1000.0;
    if how == StopKind::Term {
        cluster.wait_exit(old, Duration::from_secs(10))?;
    }
    Ok(Failover {
        killed: old,
        old_epoch,
        new_control,
        new_epoch,
        failover_ms,
    })
}

fn exe() -> Result<std::path::PathBuf, ClusterError> {
    std::env::current_exe().map_err(|source| ClusterError::Io {
        what: "locating the smart executable".into(),
        source,
    })
}

pub use crate::case_study::run;

/// Nearest-rank percentile `p` in [0, 100] of sorted values ([`smart_proto::stats`]); NaN
/// when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    smart_proto::stats::percentile_sorted(sorted, p / 100.0).unwrap_or(f64::NAN)
}

/// Pause between a trial's recovery and the next stop.
const TRIAL_GAP: Duration = Duration::from_secs(1);

/// Runs the failover benchmark: `trials` kills, the killed node restarted after each.
pub async fn bench_failover(args: FailoverBenchArgs) -> Result<(), ClusterError> {
    let mut spec = ClusterSpec::new(exe()?, args.nodes.max(2));
    // The nodes' log filter: quiet unless asked (`SMART_BENCH_LOG=debug`, with
    // `SMART_KEEP_CLUSTER=1` to keep the logs).
    spec.log = std::env::var("SMART_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    if args.majority {
        spec.mode = crate::cluster::ElectionMode::Majority;
    }
    let mut cluster = LocalCluster::start(spec)?;
    let mut times = Vec::new();
    for t in 0..args.trials {
        // A planned stop comes to a Control that has held office for a while: in majority
        // mode a Raft leader elected less than a leader lease (300 ms) ago cannot vote
        // for its successor yet, and the hand-over falls back to an election.
        tokio::time::sleep(TRIAL_GAP).await;
        let f = stop_control_and_measure(&mut cluster, args.stop).await?;
        if !args.json {
            println!(
                "trial {:>2}: {} n{} -> n{} epoch {} in {:.0} ms",
                t + 1,
                match args.stop {
                    StopKind::Kill => "killed",
                    StopKind::Term => "stopped (SIGTERM)",
                },
                f.killed,
                f.new_control,
                f.new_epoch,
                f.failover_ms
            );
        }
        times.push(f.failover_ms);
        cluster.start_node(f.killed)?;
        // Wait until the restarted node is back and agrees, so every trial starts from a
        // full cluster.
        let all = cluster.running();
        cluster
            .wait_agreed_control(&all, Duration::from_secs(10), |_, _| true)
            .await?;
        if args.majority {
            cluster
                .wait_desired_caught_up(&all, Duration::from_secs(10))
                .await?;
        }
    }
    times.sort_by(f64::total_cmp);
    let p50 = percentile(&times, 50.0);
    let p99 = percentile(&times, 99.0);
    let max = times.last().copied().unwrap_or(f64::NAN);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"trials": times.len(), "stop": args.stop, "majority": args.majority, "nodes": args.nodes, "failover_p50_ms": p50, "failover_p99_ms": p99, "failover_max_ms": max})
        );
    } else {
        println!(
            "control failover ({}, {} mode) over {} trials ({} nodes, default timings): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            match args.stop {
                StopKind::Kill => "kill -9",
                StopKind::Term => "SIGTERM, hand-over",
            },
            if args.majority {
                "majority"
            } else {
                "available"
            },
            times.len(),
            args.nodes,
            p50,
            p99,
            max
        );
    }
    Ok(())
}
