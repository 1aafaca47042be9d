//! `smart demo`: the Smart-GloVE case study (thesis chapter 5) on one machine, with no set-up.
//!
//! A [`LocalCluster`] of real `smart node` processes on loopback (the last node is the
//! front-end, with no agent role), an in-process origin serving generated MPEG-TS videos
//! (or, with `--real-video`, a real H.264 + AAC video made once with ffmpeg), and
//! in-process viewers that ask the front-end for Zipf-popular videos
//! (`GET /watch/{video}`, relayed by the front-end from the distributor the Control placed,
//! in the default configuration), check every byte and resume by `Range` when a connection
//! closes. Mid-run:
//! - at 25 % of the run the Control is killed with `kill -9` (its node's distributors die
//!   with it: the Control and a service node together); the node is restarted (a reboot)
//!   and comes back empty;
//! - at 45 % another service node is killed with `kill -9`;
//! - at 65 % a third node is drained (`Request::Drain`: live migration).
//!
//! A progress line is printed every two seconds; at the end, a summary (or one JSON object
//! with `--json`). Figures come from the viewers' own measurements and from the events the
//! cluster publishes to a subscriber on the front-end node.
//!
//! ## Layout
//! - [`run`]: the demo; [`Summary`]: its result.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde::Serialize;
use smart_api::{Event, Request, Response, ServiceStatus};
use smart_vod::http::Url;
use smart_vod::origin::{Origin, Video};
use smart_vod::ts::VideoParams;
use smart_vod::viewer::{Shared, ViewerConfig, ViewerReport, run_viewer};
use tokio::sync::watch;

use crate::cluster::{ClusterError, ClusterSpec, LocalCluster};
use crate::demo::{DemoArgs, kill_control_and_measure, percentile};

const KBPS: u64 = 400;

/// What the demo measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    /// Nodes (the front-end included).
    pub nodes: usize,
    /// Viewers started.
    pub viewers: usize,
    /// Viewers that started playing.
    pub viewers_playing: usize,
    /// Services (distributors) admitted (`Admitted` events).
    pub admitted_services: u64,
    /// Viewer requests the front-end answered 503 (admission said no, or no Control yet).
    pub rejected_requests: u64,
    /// Services moved (`Migrated` events: MS, drain, node failure, crash).
    pub migrations: u64,
    /// Migrations caused by an anomaly (an instance persistently over its reservation).
    pub anomaly_moves: u64,
    /// Services lost (`Lost` events; must be 0).
    pub lost_services: u64,
    /// Share of node-intervals (1 s, the Control's view) in which the measured CPU or
    /// network of a node's instances exceeded VR × its capacity, %.
    pub overload_pct: f64,
    /// Node-intervals sampled for `overload_pct`.
    pub node_intervals: u64,
    /// kill -9 of the Control until every survivor reports the new one.
    pub control_failover_ms: f64,
    /// Viewers of the killed service node: the pause until their stream resumed, p99. With
    /// the front-end relaying (the default) it is the front-end's pause from the upstream
    /// seen broken to the first byte of the next, as the upper bound of its histogram
    /// bucket (`frontend_relay_resume_le_*`); with `redirect`, the viewers' own reconnect
    /// gap.
    pub node_failure_resume_p99_ms: f64,
    /// Its maximum (relayed: the upper bound of the highest bucket reached).
    pub node_failure_resume_max_ms: f64,
    /// Viewers of the drained node: migration gap, p99 (measured as above).
    pub migration_gap_p99_ms: f64,
    /// Relayed streams the front-end resumed after a break (node deaths, handoffs).
    pub relay_resumes: u64,
    /// The drain, in words: which node, and whether it was accepted or why not.
    pub drain: String,
    /// Distributors on the drained node when it was drained.
    pub drained_services: u64,
    /// Of those, how many still ran there at the end (a drain with no room elsewhere
    /// leaves them, and the node stays in service; 0 when it completed).
    pub drained_left_behind: u64,
    /// Stalls over all viewers.
    pub stalls: u64,
    /// Rebuffer time / session time over all viewers.
    pub rebuffer_ratio: f64,
    /// Integrity errors (corrupt or misplaced bytes) over all viewers; must be 0.
    pub corrupt_streams: u64,
    /// Bytes received by all viewers.
    pub bytes: u64,
}

fn zipf_pick(rng: &mut impl Rng, n: usize) -> usize {
    let h: f64 = (1..=n).map(|k| 1.0 / k as f64).sum();
    let mut x = rng.random::<f64>() * h;
    for k in 1..=n {
        x -= 1.0 / k as f64;
        if x <= 0.0 {
            return k - 1;
        }
    }
    n - 1
}

/// The front-end's counters now (empty if it does not answer).
async fn fe_counters(c: &LocalCluster, fe: u64) -> std::collections::BTreeMap<String, u64> {
    c.status(fe)
        .await
        .map(|s| s.counters.into_iter().collect())
        .unwrap_or_default()
}

/// The relay's resume pauses between two counter snapshots: (resumes, p99, highest
/// bucket), ms as bucket upper bounds; `None` when nothing was resumed.
fn relay_pauses(
    from: &std::collections::BTreeMap<String, u64>,
    to: &std::collections::BTreeMap<String, u64>,
) -> Option<(u64, f64, f64)> {
    let delta = |k: &str| {
        to.get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(from.get(k).copied().unwrap_or(0))
    };
    let p99 = smart_frontend::resume_quantile(&delta, 0.99)?;
    let max = smart_frontend::resume_quantile(&delta, 1.0)?;
    Some((delta("frontend_relay_resumes"), p99, max))
}

async fn services(c: &LocalCluster, via: u64) -> Vec<ServiceStatus> {
    let Ok(cl) = c.client(via).await else {
        return Vec::new();
    };
    match cl
        .with_timeout(Duration::from_secs(5))
        .request(Request::Services)
        .await
    {
        Ok(Response::Services(s)) => s,
        _ => Vec::new(),
    }
}

fn counter(s: &smart_api::ClusterStatus, name: &str) -> u64 {
    s.counters
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| *v)
        .unwrap_or(0)
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<(), ClusterError> {
    let n = args.nodes.max(4);
    let fe = n as u64;
    let say = |s: String| {
        if !args.json {
            println!("{s}");
        }
    };
    // Origin with the videos, long enough for the whole run.
    let secs = args.duration.as_secs() + 60;
    let video = if args.real_video {
        // One real H.264 + AAC video (cached across runs), served under every name.
        let ffmpeg = smart_vod::tools::which("ffmpeg").ok_or_else(|| ClusterError::Node {
            node: 0,
            reason: "--real-video needs ffmpeg (run scripts/setup.sh)".into(),
        })?;
        say(format!(
            "making a real {KBPS} kbit/s H.264 video of {secs} s with ffmpeg (cached in {})",
            crate::videos::cache_dir().display()
        ));
        crate::videos::real_video(&ffmpeg, Duration::from_secs(secs), KBPS).map_err(|e| {
            ClusterError::Node {
                node: 0,
                reason: e.to_string(),
            }
        })?
    } else {
        Video::generated(VideoParams {
            bitrate_bps: KBPS * 1000,
            duration_ms: secs * 1000,
        })
        .map_err(|e| ClusterError::Node {
            node: 0,
            reason: format!("generating videos: {e}"),
        })?
    };
    let mut origin = Origin::new();
    for v in 0..args.videos.max(1) {
        origin.add(&format!("v{v}"), video.clone());
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| ClusterError::Io {
            what: "binding the origin".into(),
            source,
        })?;
    let origin_url = format!("http://{}", l.local_addr().expect("bound"));
    tokio::spawn(Arc::new(origin).serve(l));

    let mut spec = ClusterSpec::new(
        std::env::current_exe().map_err(|source| ClusterError::Io {
            what: "locating the smart executable".into(),
            source,
        })?,
        n,
    );
    spec.log = "warn".into();
    spec.frontends = vec![fe];
    spec.no_agent = vec![fe];
    spec.origin = origin_url.clone();
    spec.bitrate_bps = KBPS * 1000;
    spec.nic_bps = args.nic_mbps * 1_000_000;
    if let Some(e) = &args.estimator {
        spec.admission_toml = format!("estimator = {e:?}\n");
    }
    let started = Instant::now();
    let mut cluster = LocalCluster::start(spec)?;
    say(format!(
        "SMART demo: {} nodes on loopback (n{fe} is the front-end), {} viewers over {} Zipf-popular videos of {KBPS} kbit/s, {:?}; files in {}",
        n,
        args.viewers,
        args.videos,
        args.duration,
        cluster.dir().display()
    ));
    let all = cluster.running();
    let (c, e) = cluster
        .wait_agreed_control(&all, Duration::from_secs(15), |_, _| true)
        .await?;
    say(format!(
        "control: n{c} at epoch {e}, {} ms after start",
        started.elapsed().as_millis()
    ));

    // Events, from a subscriber on the front-end node (which never dies).
    let admitted = Arc::new(AtomicU64::new(0));
    let migrated = Arc::new(AtomicU64::new(0));
    let anomaly_moves = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let sub = cluster.client(fe).await?;
    sub.subscribe().await.map_err(|e| ClusterError::Node {
        node: fe,
        reason: e.to_string(),
    })?;
    {
        let (a, m, l, am) = (
            admitted.clone(),
            migrated.clone(),
            lost.clone(),
            anomaly_moves.clone(),
        );
        let quiet = args.json;
        tokio::spawn(async move {
            while let Some(ev) = sub.next_event().await {
                match &ev {
                    Event::Admitted(_) => {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::Migrated {
                        service,
                        from,
                        to,
                        reason,
                    } => {
                        m.fetch_add(1, Ordering::Relaxed);
                        if reason.starts_with("anomaly") {
                            am.fetch_add(1, Ordering::Relaxed);
                        }
                        if !quiet {
                            println!("  event: {service} moved {from} -> {to} ({reason})");
                        }
                    }
                    Event::Notice {
                        service,
                        node,
                        reason,
                    } if !quiet => println!("  event: {service} on {node}: {reason}"),
                    Event::Lost { service, reason } => {
                        l.fetch_add(1, Ordering::Relaxed);
                        if !quiet {
                            println!("  event: {service} LOST: {reason}");
                        }
                    }
                    _ => {}
                }
            }
        });
    }

    // Overload: every second, each node's instances' measured CPU and network against
    // VR × its capacity, as the Control sees them. (All nodes share this host, so the
    // host-wide CPU would count every node's work, and other programs', on each of them.)
    let intervals = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let sampler = {
        let client = cluster.client(fe).await?;
        let intervals = intervals.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Ok(smart_api::Response::Nodes(nodes)) =
                    client.request(smart_api::Request::Nodes).await
                else {
                    continue; // an election: no view this second
                };
                for n in nodes {
                    let Some(u) = n.usage else { continue };
                    let cpu: f64 = n.instances.iter().filter_map(|i| i.cpu_cores).sum();
                    let net: f64 = n.instances.iter().filter_map(|i| i.net_bps).sum();
                    let over = cpu > n.vr * u.cpus as f64 || net > n.vr * u.nic_capacity_bps as f64;
                    intervals.0.fetch_add(1, Ordering::Relaxed);
                    intervals.1.fetch_add(over as u64, Ordering::Relaxed);
                }
            }
        })
    };

    // Viewers.
    let fe_url = cluster.frontend_url(fe).expect("front-end node");
    let (stop, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared::default());
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let ramp = (args.duration / 5).min(Duration::from_secs(10));
    let mut viewers = Vec::new();
    for i in 0..args.viewers {
        let video = format!("v{}", zipf_pick(&mut rng, args.videos.max(1)));
        let url = Url::parse(&format!("{fe_url}/watch/{video}")).expect("valid url");
        let cfg = ViewerConfig {
            url: url.clone(),
            frontend: Some(url),
            bitrate_bps: KBPS * 1000,
            prefetch_bytes: 0,
            start_buffer: Duration::from_millis(1000),
            start_offset: 0,
        };
        let (shared, rx) = (shared.clone(), stop_rx.clone());
        let delay = ramp * i as u32 / args.viewers.max(1) as u32;
        viewers.push((
            video,
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                run_viewer(&cfg, &shared, rx).await
            }),
        ));
    }

    let t0 = Instant::now();
    let at = |f: f64| t0 + args.duration.mul_f64(f);
    let mut summary = Summary {
        nodes: n,
        viewers: args.viewers,
        ..Default::default()
    };
    let mut killed_services: BTreeSet<String> = BTreeSet::new();
    let mut drained_services: BTreeSet<String> = BTreeSet::new();
    let mut drained_node: Option<u64> = None;
    summary.drain = "not done (no busy node other than the Control and the front-end)".into();
    let (mut did_control, mut did_node, mut did_drain) = (false, false, false);
    let mut last_progress = Instant::now();
    let (mut before_node, mut before_drain) = (Default::default(), Default::default());
    while t0.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = Instant::now();
        if !did_control && now >= at(0.25) {
            did_control = true;
            say("kill -9 the Control (its node's distributors die with it) ...".into());
            let f = kill_control_and_measure(&mut cluster).await?;
            say(format!(
                "  new control n{} at epoch {}: failover {:.0} ms (kill until every survivor reports it)",
                f.new_control, f.new_epoch, f.failover_ms
            ));
            summary.control_failover_ms = f.failover_ms;
            // The machine reboots: its node comes back empty and takes new work.
            cluster.start_node(f.killed)?;
            say(format!("  n{} restarted (empty)", f.killed));
        }
        if !did_node && now >= at(0.45) {
            did_node = true;
            before_node = fe_counters(&cluster, fe).await;
            let control = cluster
                .wait_agreed_control(&cluster.running(), Duration::from_secs(10), |_, _| true)
                .await?
                .0;
            let placed = services(&cluster, fe).await;
            let victim = placed
                .iter()
                .map(|s| s.placement.node.0)
                .find(|&x| x != fe && x != control);
            if let Some(v) = victim {
                killed_services = placed
                    .iter()
                    .filter(|s| s.placement.node.0 == v)
                    .map(|s| s.placement.service.clone())
                    .collect();
                say(format!(
                    "kill -9 service node n{v} ({} distributors: {:?}) ...",
                    killed_services.len(),
                    killed_services
                ));
                cluster.kill(v)?;
            }
        }
        if !did_drain && now >= at(0.65) {
            did_drain = true;
            before_drain = fe_counters(&cluster, fe).await;
            let control = cluster
                .wait_agreed_control(&cluster.running(), Duration::from_secs(10), |_, _| true)
                .await?
                .0;
            let placed = services(&cluster, fe).await;
            // Drain a busy node that is not the Control.
            let mut load: std::collections::BTreeMap<u64, u64> = Default::default();
            for s in &placed {
                *load.entry(s.placement.node.0).or_default() += s.clients;
            }
            if let Some((&node, _)) = load
                .iter()
                .filter(|(n, _)| **n != control && **n != fe)
                .max_by_key(|(_, c)| **c)
            {
                drained_services = placed
                    .iter()
                    .filter(|s| s.placement.node.0 == node)
                    .map(|s| s.placement.service.clone())
                    .collect();
                say(format!(
                    "drain n{node} ({} distributors) ...",
                    drained_services.len()
                ));
                drained_node = Some(node);
                let cl = cluster.client(fe).await?;
                let outcome = match cl
                    .with_timeout(Duration::from_secs(30))
                    .request(Request::Drain {
                        node: smart_proto::NodeId(node),
                    })
                    .await
                {
                    Ok(Response::Ok) => "accepted".to_string(),
                    Ok(Response::Error(e)) => format!("refused: {e}"),
                    Ok(_) => "answered with something other than a yes or a refusal".to_string(),
                    Err(e) => format!("failed: {e}"),
                };
                say(format!("  drain of n{node} {outcome}"));
                summary.drain = format!("n{node} {outcome}");
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(2) {
            last_progress = Instant::now();
            let placed = services(&cluster, fe).await;
            let clients: u64 = placed.iter().map(|s| s.clients).sum();
            let mut nodes: Vec<String> = Vec::new();
            for node in cluster.running().into_iter().filter(|x| *x != fe) {
                let k = placed.iter().filter(|s| s.placement.node.0 == node).count();
                nodes.push(format!("n{node}:{k}"));
            }
            say(format!(
                "[{:>5.1}s] services {:>2} ({}) clients {:>4} | admitted {} moved {} lost {}",
                t0.elapsed().as_secs_f64(),
                placed.len(),
                nodes.join(" "),
                clients,
                admitted.load(Ordering::Relaxed),
                migrated.load(Ordering::Relaxed),
                lost.load(Ordering::Relaxed),
            ));
        }
    }
    let _ = stop.send(true);
    let mut reports: Vec<(String, ViewerReport)> = Vec::new();
    for (v, h) in viewers {
        if let Ok(r) = h.await {
            reports.push((v, r));
        }
    }
    let (mut resume, mut migration) = (Vec::new(), Vec::new());
    let (mut rebuffer, mut session) = (0.0, 0.0);
    for (v, r) in &reports {
        let svc = format!("video-{v}");
        summary.stalls += r.stalls as u64;
        summary.corrupt_streams += r.integrity_errors;
        summary.bytes += r.bytes;
        rebuffer += r.rebuffer_ms;
        session += r.session_ms;
        if r.startup_ms.is_some() {
            summary.viewers_playing += 1;
        }
        if killed_services.contains(&svc)
            && let Some(g) = r
                .gaps_ms
                .iter()
                .rev()
                .nth(drained_services.contains(&svc) as usize)
        {
            resume.push(*g);
        }
        if drained_services.contains(&svc)
            && let Some(g) = r.gaps_ms.last()
        {
            migration.push(*g);
        }
    }
    resume.sort_by(f64::total_cmp);
    migration.sort_by(f64::total_cmp);
    summary.node_failure_resume_p99_ms = if resume.is_empty() {
        0.0
    } else {
        percentile(&resume, 99.0)
    };
    summary.node_failure_resume_max_ms = resume.last().copied().unwrap_or(0.0);
    summary.migration_gap_p99_ms = if migration.is_empty() {
        0.0
    } else {
        percentile(&migration, 99.0)
    };
    // Relayed viewers never reconnect: their pauses are the front-end's.
    let end = fe_counters(&cluster, fe).await;
    if did_node
        && resume.is_empty()
        && let Some((_, p99, max)) = relay_pauses(&before_node, &before_drain)
    {
        summary.node_failure_resume_p99_ms = p99;
        summary.node_failure_resume_max_ms = max;
    }
    if did_drain
        && migration.is_empty()
        && let Some((_, p99, _)) = relay_pauses(&before_drain, &end)
    {
        summary.migration_gap_p99_ms = p99;
    }
    summary.relay_resumes = end.get("frontend_relay_resumes").copied().unwrap_or(0);
    summary.rebuffer_ratio = if session > 0.0 {
        rebuffer / session
    } else {
        0.0
    };
    summary.admitted_services = admitted.load(Ordering::Relaxed);
    summary.migrations = migrated.load(Ordering::Relaxed);
    summary.anomaly_moves = anomaly_moves.load(Ordering::Relaxed);
    sampler.abort();
    summary.node_intervals = intervals.0.load(Ordering::Relaxed);
    summary.overload_pct = if summary.node_intervals == 0 {
        0.0
    } else {
        intervals.1.load(Ordering::Relaxed) as f64 * 100.0 / summary.node_intervals as f64
    };
    summary.lost_services = lost.load(Ordering::Relaxed);
    if let Ok(s) = cluster.status(fe).await {
        summary.rejected_requests = counter(&s, "frontend_503");
    }
    summary.drained_services = drained_services.len() as u64;
    if let Some(node) = drained_node {
        summary.drained_left_behind = services(&cluster, fe)
            .await
            .iter()
            .filter(|s| {
                s.placement.node.0 == node && drained_services.contains(&s.placement.service)
            })
            .count() as u64;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("plain data")
        );
    } else {
        println!("--- summary ---");
        println!(
            "viewers {} (playing {}), services admitted {}, front-end 503s {}",
            summary.viewers,
            summary.viewers_playing,
            summary.admitted_services,
            summary.rejected_requests
        );
        println!(
            "migrations {} (anomaly {}), services lost {}, corrupt streams {}, overload {:.1} % of {} node-intervals",
            summary.migrations,
            summary.anomaly_moves,
            summary.lost_services,
            summary.corrupt_streams,
            summary.overload_pct,
            summary.node_intervals
        );
        println!(
            "control failover {:.0} ms; dead node's viewers resumed p99 {:.0} ms (max {:.0}); drain gap p99 {:.0} ms{}",
            summary.control_failover_ms,
            summary.node_failure_resume_p99_ms,
            summary.node_failure_resume_max_ms,
            summary.migration_gap_p99_ms,
            if summary.relay_resumes > 0 {
                format!(
                    " (the front-end relayed: {} streams resumed, pauses as histogram bucket bounds)",
                    summary.relay_resumes
                )
            } else {
                String::new()
            }
        );
        println!(
            "drain {}: {} of {} distributors moved off{}",
            summary.drain,
            summary.drained_services - summary.drained_left_behind,
            summary.drained_services,
            if summary.drained_left_behind > 0 {
                format!(
                    ", {} stayed (no room elsewhere: the node stays in service with them)",
                    summary.drained_left_behind
                )
            } else {
                String::new()
            }
        );
        println!(
            "stalls {}, rebuffer ratio {:.4}, {:.1} MB delivered",
            summary.stalls,
            summary.rebuffer_ratio,
            summary.bytes as f64 / 1e6
        );
    }
    Ok(())
}
