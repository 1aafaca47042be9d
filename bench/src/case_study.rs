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
//! With `--netns` (root) the same case study runs on hosts: every node, the origin and the
//! viewers in a network namespace of their own on a bridge ([`crate::netns`]), and a second
//! front-end sharing the viewers' address with keepalived (the deployment kit's
//! `deploy/frontend-pair`). The faults come earlier (Control at 20 %, service node at 35 %)
//! to make room for two more: at 50 % a service host is cut off the network for a few
//! seconds and then heals, at 80 % the machine holding the viewers' address dies.
//!
//! A progress line is printed every two seconds; at the end, a summary (or one JSON object
//! with `--json`). Figures come from the viewers' own measurements, the events the cluster
//! publishes to a subscriber on a front-end node, the front-end's counters, and the
//! distributors' own `usage` (restored and refetched bytes), read through their control
//! sockets; after the viewers stop, the instance processes themselves are counted.
//!
//! Ctrl-C ends the run early; every process and namespace it made is removed.
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
use crate::netns::Hosts;

const KBPS: u64 = 400;
/// On hosts: the client namespace's address (origin and viewers), last octet.
const CLIENT_OCTET: u8 = 100;
/// On hosts: the address the two front-ends share, last octet.
const VIP_OCTET: u8 = 50;
/// On hosts: the origin's port.
const ORIGIN_PORT: u16 = 8000;
/// How long the cluster may take, after the viewers stop, to run exactly one instance of
/// every service again.
const SETTLE: Duration = Duration::from_secs(15);

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
    /// Where the nodes ran: `loopback`, or `network namespaces` (hosts with their own
    /// addresses on a bridge).
    pub hosts: String,
    /// The partition (on hosts), in words: which host, for how long, and that it healed.
    pub partition: String,
    /// The death of the viewers' front-end (on hosts), in words.
    pub frontend_death: String,
    /// The machine holding the viewers' address killed until the other front-end holds it
    /// (keepalived's takeover), ms; `null` when not done.
    pub frontend_failover_ms: Option<f64>,
    /// Each viewer's longest gap (closed connection to the first byte of the next), p50
    /// and max over the viewers that had one, ms: on hosts, the front-end's death.
    pub viewer_longest_gap_p50_ms: f64,
    /// See `viewer_longest_gap_p50_ms`.
    pub viewer_longest_gap_max_ms: f64,
    /// Cache bytes the migration targets loaded from their sources (the pre-copies).
    pub cache_bytes_restored: u64,
    /// Bytes migration targets fetched from the origin again for blocks their pre-copy had
    /// given them (goal 0). Blocks a source fetched after its pre-copy are not in it.
    pub origin_bytes_refetched: u64,
    /// Services running more than one instance once the cluster had [`SETTLE`] to settle
    /// after the viewers stopped (goal 0).
    pub duplicates_after_settle: u64,
    /// Services the Control lists that run no instance after settling (goal 0).
    pub missing_after_settle: u64,
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

/// The Control every running node agrees on, and its listing of services (through `fe`).
async fn control_and_listing(
    cluster: &LocalCluster,
    fe: u64,
) -> Result<(u64, Vec<ServiceStatus>), ClusterError> {
    let control = cluster
        .wait_agreed_control(&cluster.running(), Duration::from_secs(10), |_, _| true)
        .await?
        .0;
    Ok((control, cluster.services(fe).await))
}

/// Runs the demo: on loopback, or with `--netns` on namespace hosts (the whole run on a
/// thread inside the client namespace, so that its sockets are the viewers' and the
/// origin's). Ctrl-C stops it early and removes what it made.
pub async fn run(args: DemoArgs) -> Result<(), ClusterError> {
    if !args.netns {
        return interruptible(case_study(args, None)).await;
    }
    let hosts = args.nodes.max(4) + 1;
    tokio::task::spawn_blocking(move || {
        let made = Arc::new(Hosts::create("smdemo", hosts, &[("c", CLIENT_OCTET)])?);
        let inner = made.clone();
        let run = std::thread::spawn(move || -> Result<(), ClusterError> {
            Hosts::enter(&inner.named("c"))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|source| ClusterError::Io {
                    what: "starting the demo's runtime".into(),
                    source,
                })?;
            rt.block_on(interruptible(case_study(args, Some(inner))))
        })
        .join();
        // The nodes are gone (the run dropped its cluster); now the namespaces.
        drop(made);
        run.unwrap_or_else(|_| {
            Err(ClusterError::Io {
                what: "the demo".into(),
                source: std::io::Error::other("panicked"),
            })
        })
    })
    .await
    .map_err(|e| ClusterError::Io {
        what: "the demo".into(),
        source: std::io::Error::other(e.to_string()),
    })?
}

/// `f`, or [`ClusterError::Interrupted`] at Ctrl-C (dropping `f` kills what it started).
async fn interruptible(
    f: impl std::future::Future<Output = Result<(), ClusterError>>,
) -> Result<(), ClusterError> {
    tokio::select! {
        r = f => r,
        _ = tokio::signal::ctrl_c() => Err(ClusterError::Interrupted),
    }
}

/// keepalived on front-end host `i` with `priority`, configured from the deployment kit
/// as docs/operations.md says; its check script lies in `run_dir` (root-owned: keepalived
/// runs only scripts no other user can change).
fn start_keepalived(
    keepalived: &std::path::Path,
    hosts: &Hosts,
    dir: &std::path::Path,
    run_dir: &std::path::Path,
    (i, priority, port): (usize, u32, u16),
) -> Result<std::process::Child, ClusterError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| ClusterError::Io { what, source }
    };
    let check = run_dir.join("check-frontend");
    if !check.exists() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            &check,
            include_str!("../../deploy/frontend-pair/check-frontend"),
        )
        .map_err(io("writing check-frontend"))?;
        std::fs::set_permissions(&check, std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod check-frontend"))?;
    }
    let vip = hosts.ip(VIP_OCTET as usize);
    let conf = include_str!("../../deploy/frontend-pair/keepalived.conf")
        .replace("PRIORITY", &priority.to_string())
        .replace("INTERFACE", "eth0")
        .replace("VIRTUAL_IP/PREFIX", &format!("{vip}/24"))
        .replace(
            "/usr/local/lib/smart/check-frontend 7102",
            &format!("{} {port}", check.display()),
        )
        .replace(
            "router_id smart_frontend",
            &format!("router_id smart_fe{i}"),
        );
    let path = dir.join(format!("keepalived-{i}.conf"));
    std::fs::write(&path, conf).map_err(io("writing keepalived.conf"))?;
    let log = std::fs::File::create(dir.join(format!("keepalived-{i}.log")))
        .map_err(io("creating keepalived's log"))?;
    let log2 = log.try_clone().map_err(io("keepalived's log"))?;
    std::process::Command::new("ip")
        .args(["netns", "exec", &hosts.ns(i)])
        .arg(keepalived)
        .args(["--dont-fork", "--log-console", "--vrrp", "--use-file"])
        .arg(&path)
        .arg("--pid")
        .arg(run_dir.join(format!("keepalived-{i}.pid")))
        .arg("--vrrp_pid")
        .arg(run_dir.join(format!("vrrp-{i}.pid")))
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(io("starting keepalived"))
}

/// Waits until host `i` holds the shared address; how long it took.
async fn wait_for_vip(hosts: &Hosts, i: usize, within: Duration) -> Result<Duration, ClusterError> {
    let t = Instant::now();
    let vip = hosts.ip(VIP_OCTET as usize);
    while !hosts.holds(i, vip) {
        if t.elapsed() >= within {
            return Err(ClusterError::Timeout {
                what: format!("n{i} to hold the front-ends' address {vip} (keepalived)"),
                after: within,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(t.elapsed())
}

/// `(restored, refetched)` bytes of each instance's last answer, by instance name.
type RestoreFigures = std::collections::BTreeMap<String, (u64, u64)>;

/// Asks every running instance for its `usage` and keeps its restore figures.
async fn poll_restores(dir: &std::path::Path, seen: &mut RestoreFigures) {
    for (_, node, inst) in crate::cluster::running_instances(dir) {
        let sock = dir.join(format!("n{node}/instances/{inst}.sock"));
        let Ok(mut c) =
            smart_proto::workload::WorkloadClient::connect(&sock, Duration::from_secs(1)).await
        else {
            continue;
        };
        if let Ok(u) = c.usage().await {
            seen.insert(inst, (u.restored_bytes, u.origin_refetched_bytes));
        }
    }
}

async fn case_study(args: DemoArgs, hosts: Option<Arc<Hosts>>) -> Result<(), ClusterError> {
    // On hosts a second front-end (never killed, never the viewers' first) joins the last.
    let n = args.nodes.max(4) + hosts.is_some() as usize;
    let fe = n as u64;
    let primary = if hosts.is_some() { fe - 1 } else { fe };
    let frontends: Vec<u64> = (primary..=fe).collect();
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
    let origin_addr = match &hosts {
        Some(h) => format!("{}:{ORIGIN_PORT}", h.ip(CLIENT_OCTET as usize)),
        None => "127.0.0.1:0".to_string(),
    };
    let l = tokio::net::TcpListener::bind(&origin_addr)
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
    spec.frontends = frontends.clone();
    spec.no_agent = frontends.clone();
    spec.hosts = hosts.clone();
    spec.origin = origin_url.clone();
    spec.bitrate_bps = KBPS * 1000;
    spec.nic_bps = args.nic_mbps * 1_000_000;
    if let Some(e) = &args.estimator {
        spec.admission_toml = format!("estimator = {e:?}\n");
    }
    let started = Instant::now();
    let mut cluster = LocalCluster::start(spec)?;
    let fe_names: Vec<String> = frontends.iter().map(|f| format!("n{f}")).collect();
    say(format!(
        "SMART demo: {} nodes {} ({} the front-end{}), {} viewers over {} Zipf-popular videos of {KBPS} kbit/s, {:?}; files in {}",
        n,
        match &hosts {
            Some(h) => format!(
                "on network-namespace hosts {}.1-{n} (namespaces {}*, origin and viewers at {})",
                crate::netns::SUBNET.map(|b| b.to_string()).join("."),
                h.prefix(),
                h.ip(CLIENT_OCTET as usize)
            ),
            None => "on loopback".to_string(),
        },
        fe_names.join(" and "),
        if frontends.len() > 1 { "s" } else { "" },
        args.viewers,
        args.videos,
        args.duration,
        cluster.dir().display()
    ));
    say(format!(
        "dashboard: {}/ui#token={} (a read token); CLI: SMART_TOKEN=<it> smart status --addr {}{}",
        cluster.http_url(fe),
        cluster.read_token(),
        cluster.http_url(fe),
        match &hosts {
            Some(h) => format!(
                " (inside the namespaces, e.g. `ip netns exec {} smart status ...`)",
                h.named("c")
            ),
            None => String::new(),
        }
    ));
    let all = cluster.running();
    let (c, e) = cluster
        .wait_agreed_control(&all, Duration::from_secs(15), |_, _| true)
        .await?;
    say(format!(
        "control: n{c} at epoch {e}, {} ms after start",
        started.elapsed().as_millis()
    ));
    // On hosts: the front-ends share one address, the first one preferred.
    let mut daemons: Vec<std::process::Child> = Vec::new();
    let run_dir = hosts
        .as_ref()
        .map(|h| std::path::PathBuf::from(format!("/run/{}", h.prefix())));
    let _run_dir_guard = run_dir.clone().map(RemoveOnDrop);
    if let (Some(h), Some(run_dir)) = (&hosts, &run_dir) {
        let keepalived = smart_vod::tools::which("keepalived").ok_or_else(|| ClusterError::Io {
            what: "--netns: the front-ends share an address with keepalived".into(),
            source: std::io::Error::other("keepalived is not installed (scripts/setup.sh)"),
        })?;
        std::fs::create_dir_all(run_dir).map_err(|source| ClusterError::Io {
            what: format!("creating {}", run_dir.display()),
            source,
        })?;
        let port = cluster
            .frontend_url(fe)
            .and_then(|u| u.rsplit(':').next()?.parse::<u16>().ok())
            .unwrap_or(7102);
        for (i, prio) in [(primary, 150), (fe, 100)] {
            daemons.push(start_keepalived(
                &keepalived,
                h,
                cluster.dir(),
                run_dir,
                (i as usize, prio, port),
            )?);
        }
        let took = wait_for_vip(h, primary as usize, Duration::from_secs(20)).await?;
        say(format!(
            "front-ends n{primary} and n{fe} share {} (keepalived, deploy/frontend-pair): n{primary} holds it after {} ms",
            h.ip(VIP_OCTET as usize),
            took.as_millis()
        ));
    }

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

    // Viewers, at the shared address on hosts.
    let fe_url = match &hosts {
        Some(h) => {
            let url = cluster.frontend_url(fe).expect("front-end node");
            let port = url.rsplit(':').next().unwrap_or("7103").to_string();
            format!("http://{}:{port}", h.ip(VIP_OCTET as usize))
        }
        None => cluster.frontend_url(primary).expect("front-end node"),
    };
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
    // When each fault comes: on hosts earlier, to make room for the partition and the
    // front-end's death.
    let on_hosts = hosts.is_some();
    let (t_control, t_node, t_partition, t_drain, t_frontend) = if on_hosts {
        (0.20, 0.35, Some(0.50), 0.65, Some(0.80))
    } else {
        (0.25, 0.45, None, 0.65, None)
    };
    let cut_for = args.duration.mul_f64(0.08).max(Duration::from_secs(4));
    let mut summary = Summary {
        nodes: n,
        viewers: args.viewers,
        hosts: if on_hosts {
            "network namespaces".into()
        } else {
            "loopback".into()
        },
        partition: if on_hosts {
            "not done (no service host to cut off)".into()
        } else {
            "not done (loopback: no network to cut)".into()
        },
        frontend_death: if on_hosts {
            "not done".into()
        } else {
            "not done (loopback: one front-end)".into()
        },
        ..Default::default()
    };
    let mut killed_services: BTreeSet<String> = BTreeSet::new();
    let mut drained_services: BTreeSet<String> = BTreeSet::new();
    let mut drained_node: Option<u64> = None;
    let mut dead: BTreeSet<u64> = BTreeSet::new();
    summary.drain = "not done (no busy node other than the Control and the front-end)".into();
    let (mut did_control, mut did_node, mut did_drain) = (false, false, false);
    let (mut did_partition, mut did_frontend) = (t_partition.is_none(), t_frontend.is_none());
    let mut cut: Option<(u64, Instant)> = None;
    let mut last_progress = Instant::now();
    let mut restores = RestoreFigures::new();
    // The viewers' front-end's counters before each fault (its relay's pauses).
    let (mut before_node, mut before_partition, mut before_drain, mut before_frontend) = (
        Default::default(),
        Default::default(),
        Default::default(),
        Default::default(),
    );
    while t0.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = Instant::now();
        if let Some((p, since)) = cut
            && since.elapsed() >= cut_for
        {
            cut = None;
            if let Some(h) = &hosts {
                h.set_link(p as usize, true)?;
            }
            say(format!(
                "  n{p} back on the network after {:.1} s (healed)",
                since.elapsed().as_secs_f64()
            ));
            summary.partition = format!(
                "n{p} cut off the network for {:.1} s, then healed",
                since.elapsed().as_secs_f64()
            );
        }
        if !did_control && now >= at(t_control) {
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
        if !did_node && now >= at(t_node) {
            did_node = true;
            before_node = cluster.counters(primary).await;
            let (control, placed) = control_and_listing(&cluster, fe).await?;
            let victim = placed
                .iter()
                .map(|s| s.placement.node.0)
                .find(|&x| !frontends.contains(&x) && x != control);
            if let Some(v) = victim {
                killed_services = placed
                    .iter()
                    .filter(|s| s.placement.node.0 == v)
                    .map(|s| s.placement.service.clone())
                    .collect();
                say(format!(
                    "kill -9 service node n{v} ({} distributors: {:?}); it stays down ...",
                    killed_services.len(),
                    killed_services
                ));
                cluster.kill(v)?;
                dead.insert(v);
            }
        }
        if !did_partition && now >= at(t_partition.unwrap_or(f64::INFINITY)) {
            did_partition = true;
            before_partition = cluster.counters(primary).await;
            let (control, placed) = control_and_listing(&cluster, fe).await?;
            let victim = placed
                .iter()
                .map(|s| s.placement.node.0)
                .find(|&x| !frontends.contains(&x) && x != control && !dead.contains(&x));
            if let (Some(p), Some(h)) = (victim, &hosts) {
                let k = placed.iter().filter(|s| s.placement.node.0 == p).count();
                say(format!(
                    "cut service host n{p} ({k} distributors) off the network for {:.1} s ...",
                    cut_for.as_secs_f64()
                ));
                h.set_link(p as usize, false)?;
                cut = Some((p, Instant::now()));
            }
        }
        if !did_drain && now >= at(t_drain) {
            did_drain = true;
            before_drain = cluster.counters(primary).await;
            let (control, placed) = control_and_listing(&cluster, fe).await?;
            // Drain a busy node that is not the Control (nor cut off).
            let mut load: std::collections::BTreeMap<u64, u64> = Default::default();
            for s in &placed {
                *load.entry(s.placement.node.0).or_default() += s.clients;
            }
            if let Some((&node, _)) = load
                .iter()
                .filter(|(n, _)| {
                    **n != control && !frontends.contains(n) && cut.is_none_or(|(p, _)| p != **n)
                })
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
        if !did_frontend
            && now >= at(t_frontend.unwrap_or(f64::INFINITY))
            && let Some(h) = &hosts
        {
            did_frontend = true;
            before_frontend = cluster.counters(primary).await;
            say(format!(
                "the machine of front-end n{primary}, which holds the viewers' address, dies (kill -9 of everything on it, link down) ..."
            ));
            let t = Instant::now();
            cluster.kill(primary)?;
            crate::netns::kill_namespace(&h.ns(primary as usize));
            h.set_link(primary as usize, false)?;
            dead.insert(primary);
            match wait_for_vip(h, fe as usize, Duration::from_secs(10)).await {
                Ok(_) => {
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    say(format!(
                        "  n{fe} holds {} after {ms:.0} ms",
                        h.ip(VIP_OCTET as usize)
                    ));
                    summary.frontend_failover_ms = Some(ms);
                    summary.frontend_death = format!(
                        "n{primary} died; n{fe} took over the viewers' address in {ms:.0} ms"
                    );
                }
                Err(e) => {
                    say(format!("  {e}"));
                    summary.frontend_death =
                        format!("n{primary} died; n{fe} did not take the address: {e}");
                }
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(2) {
            last_progress = Instant::now();
            poll_restores(cluster.dir(), &mut restores).await;
            let placed = cluster.services(fe).await;
            let clients: u64 = placed.iter().map(|s| s.clients).sum();
            let mut nodes: Vec<String> = Vec::new();
            for node in cluster
                .running()
                .into_iter()
                .filter(|x| !frontends.contains(x))
            {
                let k = placed.iter().filter(|s| s.placement.node.0 == node).count();
                let off = if cut.is_some_and(|(p, _)| p == node) {
                    "(cut)"
                } else {
                    ""
                };
                nodes.push(format!("n{node}:{k}{off}"));
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
    // A run shorter than the cut: heal before the end.
    if let (Some((p, _)), Some(h)) = (cut.take(), &hosts) {
        h.set_link(p as usize, true)?;
        summary.partition = format!("n{p} cut off the network, healed when the run ended");
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
    // Relayed viewers never reconnect: their pauses are the front-end's, the viewers'
    // front-end until it died.
    let end = if did_frontend && on_hosts {
        before_frontend.clone()
    } else {
        cluster.counters(primary).await
    };
    let after_node = if before_partition.is_empty() {
        &before_drain
    } else {
        &before_partition
    };
    // When the front-end relayed through a fault, its pauses are the figure: the viewers'
    // own gaps then come from elsewhere (on hosts, every viewer has one when its
    // front-end dies).
    if did_node && let Some((_, p99, max)) = relay_pauses(&before_node, after_node) {
        summary.node_failure_resume_p99_ms = p99;
        summary.node_failure_resume_max_ms = max;
    }
    if did_drain && let Some((_, p99, _)) = relay_pauses(&before_drain, &end) {
        summary.migration_gap_p99_ms = p99;
    }
    let backup = if primary != fe {
        cluster.counters(fe).await
    } else {
        Default::default()
    };
    let both = |k: &str| end.get(k).copied().unwrap_or(0) + backup.get(k).copied().unwrap_or(0);
    summary.relay_resumes = both("frontend_relay_resumes");
    summary.rejected_requests = both("frontend_503");
    let mut longest: Vec<f64> = reports
        .iter()
        .filter_map(|(_, r)| r.gaps_ms.iter().copied().reduce(f64::max))
        .collect();
    longest.sort_by(f64::total_cmp);
    if !longest.is_empty() {
        summary.viewer_longest_gap_p50_ms = percentile(&longest, 50.0);
        summary.viewer_longest_gap_max_ms = longest.last().copied().unwrap_or(0.0);
    }
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
    // Exactly one instance of each service, once the cluster had time to settle.
    let settle = Instant::now();
    loop {
        poll_restores(cluster.dir(), &mut restores).await;
        let listed = cluster.services(fe).await;
        let running = crate::cluster::running_instances(cluster.dir());
        let count = |svc: &str| running.iter().filter(|(s, _, _)| s == svc).count();
        let mut names: Vec<&str> = running.iter().map(|(s, _, _)| s.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        summary.duplicates_after_settle = names.iter().filter(|s| count(s) > 1).count() as u64;
        summary.missing_after_settle = listed
            .iter()
            .filter(|s| count(&s.placement.service) == 0)
            .count() as u64;
        let settled = summary.duplicates_after_settle == 0
            && summary.missing_after_settle == 0
            && !listed.is_empty();
        if settled || settle.elapsed() >= SETTLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    summary.cache_bytes_restored = restores.values().map(|r| r.0).sum();
    summary.origin_bytes_refetched = restores.values().map(|r| r.1).sum();
    summary.drained_services = drained_services.len() as u64;
    if let Some(node) = drained_node {
        summary.drained_left_behind = cluster
            .services(fe)
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
        if on_hosts {
            println!("partition: {}", summary.partition);
            println!(
                "front-end: {}; each viewer's longest gap p50 {:.0} ms, max {:.0} ms",
                summary.frontend_death,
                summary.viewer_longest_gap_p50_ms,
                summary.viewer_longest_gap_max_ms
            );
        }
        println!(
            "migrated caches: {:.1} MB restored from their sources, {} bytes fetched from the origin again",
            summary.cache_bytes_restored as f64 / 1e6,
            summary.origin_bytes_refetched
        );
        println!(
            "after {} s to settle: {} services with two instances, {} with none",
            SETTLE.as_secs(),
            summary.duplicates_after_settle,
            summary.missing_after_settle
        );
        println!(
            "stalls {}, rebuffer ratio {:.4}, {:.1} MB delivered",
            summary.stalls,
            summary.rebuffer_ratio,
            summary.bytes as f64 / 1e6
        );
    }
    for mut d in daemons {
        let _ = d.kill();
        let _ = d.wait();
    }
    Ok(())
}

/// Removes a directory when dropped (the keepalived scripts and pid files of a run).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
