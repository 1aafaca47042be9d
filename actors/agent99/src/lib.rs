//! # smart-agent99
//!
//! Agent99, the profiler: `smart profile` — run a service alone under the instance runtime, optionally
//! drive it with a load command, sample it every interval, and write the profile that the
//! admission engine reads (docs/DESIGN.md §3; thesis §4.1.1, §5.3).
//!
//! [`run`] is **synchronous** (it sleeps between ticks); call it from `main` directly or
//! from `spawn_blocking`. It prints a distribution table like thesis Tables 5.2/5.3 (or, with
//! `--json`, one JSON object), writes the profile JSON and, with `--plot`, SVG plots of CPU
//! and network over time like Figures 5.5-5.8.
//!
//! With `--clients 1 10` the service is profiled once per client count (the load command
//! sees the count as `{clients}` in its text and as `$SMART_CLIENTS`), and the two profiles
//! are combined into a base and a per-client increment ([`combine_client_profiles`]).
//!
//! Best effort, as in the thesis: the service should have the node to itself. On a shared
//! node the profiler raises the service's priority when it may (root: nice -10 and a high
//! CPU weight for its cgroup subtree); `--no-boost` turns that off.
//!
//! Ticks are aligned to multiples of the interval on the wall clock, so that profiles and
//! Agent86 samples taken on different nodes line up in time.
//!
//! Network: from the workload control API when the service answers it, else from
//! `--net-iface IFACE` (the interface's counters are attributed to the service, which runs
//! alone; on `lo` only transmitted bytes count, since every loopback byte is also received),
//! else not measured (reported as 0 with `net.source = "none"`).
//!
//! # Layout
//! - [`ProfileArgs`]: the command-line arguments (clap).
//! - [`run`], [`run_with`]: the command.
//! - [`profile_once`]: one measured run; [`RunData`].
//! - [`combine_client_profiles`]: base + per-client increment from two client counts.
//! - [`plot_svg`]: the figures; [`parse_bytes`]: `512M`-style sizes.

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::json;
use smart_admission::profile::{PROFILE_FORMAT_VERSION, Series, ServiceProfile};

use smart_admission::stats::{DEFAULT_EDGES_PCT, Summary, distribution, render_distribution};
use smart_instance::cgroup::CgroupConfig;
use smart_instance::runtime::{
    CgroupDriver, ExitInfo, InstanceRuntime, InstanceSpec, InstanceStatus, Limits, Output,
    ProcessDriver, RuntimeError,
};
use smart_instance::sample::{NetSource, Sampler, SamplerConfig};
use smart_instance::usage::UsagePollers;

/// Which runtime driver to profile under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum DriverChoice {
    /// cgroup when usable, else process.
    #[default]
    Auto,
    /// Process groups only.
    Process,
    /// cgroups (fails when unusable).
    Cgroup,
}

/// Arguments of `smart profile`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProfileArgs {
    /// CPU cap in cores (needs the cgroup driver).
    #[arg(long, value_name = "CORES")]
    pub cpu_limit: Option<f64>,
    /// Memory cap in bytes (suffixes K, M, G, Ki, Mi, Gi accepted).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub memory_limit: Option<u64>,
    /// Sampling interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// How long to measure (per client count).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Load command run through `sh -c` while measuring; `{clients}` is replaced by the
    /// client count, which is also in `$SMART_CLIENTS`.
    #[arg(long, value_name = "CMD")]
    pub load: Option<String>,
    /// Client counts to profile at; two or more give a base and a per-client increment.
    #[arg(long, value_name = "N", num_args = 1.., value_delimiter = ',')]
    pub clients: Vec<u32>,
    /// Service name in the profile (default: the command's file name).
    #[arg(long)]
    pub service: Option<String>,
    /// Where to write the profile JSON (default `<service>.profile.json`).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write SVG plots: a `.svg` file (both panels) or a directory (`cpu.svg`, `net.svg`).
    #[arg(long, value_name = "DIR|FILE")]
    pub plot: Option<PathBuf>,
    /// Print one JSON object instead of the tables.
    #[arg(long)]
    pub json: bool,
    /// Runtime driver.
    #[arg(long, value_enum, default_value_t = DriverChoice::Auto)]
    pub driver: DriverChoice,
    /// NIC bandwidth in bits/s, the capacity network percentages refer to.
    #[arg(long, default_value_t = 1_000_000_000)]
    pub nic_bps: u64,
    /// Attribute this interface's traffic to the service when it does not speak the
    /// workload control API.
    #[arg(long, value_name = "IFACE")]
    pub net_iface: Option<String>,
    /// Memory working set to reserve: this quantile of the samples (1.0 = peak).
    #[arg(long, default_value_t = 1.0)]
    pub working_set_quantile: f64,
    /// Do not raise the service's CPU priority.
    #[arg(long)]
    pub no_boost: bool,
    /// For a video distributor: the bitrate of the video it serves while profiled
    /// (bits/s), recorded in the profile so that admission can scale it to other videos.
    #[arg(long, value_name = "BPS")]
    pub video_bitrate_bps: Option<u64>,
    /// The duration of that video (e.g. `10min`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub video_duration: Option<Duration>,
    /// The fraction of the video the distributor's cache holds.
    #[arg(long, default_value_t = 0.2)]
    pub video_window_fraction: f64,
    /// The service to profile.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl ProfileArgs {
    /// Arguments with defaults for `command` (for programmatic use and tests).
    pub fn for_command(command: Vec<String>) -> Self {
        Self {
            cpu_limit: None,
            memory_limit: None,
            interval: Duration::from_secs(1),
            duration: Duration::from_secs(30),
            load: None,
            clients: Vec::new(),
            service: None,
            out: None,
            plot: None,
            json: false,
            driver: DriverChoice::Auto,
            nic_bps: 1_000_000_000,
            net_iface: None,
            working_set_quantile: 1.0,
            no_boost: false,
            video_bitrate_bps: None,
            video_duration: None,
            video_window_fraction: 0.2,
            command,
        }
    }
}

/// Why profiling failed.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Bad arguments.
    #[error("invalid arguments: {0}")]
    InvalidArgs(String),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Plotting failed.
    #[error("plot {path}: {reason}")]
    Plot {
        /// The file.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
    /// Too few samples to make a profile.
    #[error("no complete sample: the service ran for less than one interval ({0})")]
    NoSamples(String),
}

/// Parse `1048576`, `512K`, `64M`, `2G`, `64Mi`, `1GiB`... (K = 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult: u64 = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 1,
        "k" | "ki" => 1 << 10,
        "m" | "mi" => 1 << 20,
        "g" | "gi" => 1 << 30,
        "t" | "ti" => 1 << 40,
        _ => return Err(format!("unknown size unit in {s:?}")),
    };
    let v = n * mult as f64;
    if !(v.is_finite() && v >= 1.0 && v < u64::MAX as f64) {
        return Err(format!("size out of range: {s:?}"));
    }
    Ok(v as u64)
}

/// What one measured run produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunData {
    /// Client count of this run.
    pub clients: Option<u32>,
    /// Per-interval samples (CPU cores, network bits/s, resident bytes).
    pub series: Series,
    /// Per-interval working set, bytes.
    pub working_set: Vec<u64>,
    /// Where network figures came from.
    pub net_source: NetSource,
    /// The runtime driver used.
    pub driver: String,
    /// Set when the service ended before the duration.
    pub exit: Option<ExitInfo>,
    /// Problems seen (e.g. memory limit exceeded).
    pub flags: Vec<String>,
    /// Interval, ms.
    pub interval_ms: u64,
}

fn make_runtime(
    args: &ProfileArgs,
    sockets: &Path,
    boost: bool,
) -> Result<(Box<dyn InstanceRuntime>, Option<CgroupDriverGuard>), ProfileError> {
    let try_cgroup = |required: bool| -> Result<Option<CgroupDriver>, ProfileError> {
        remove_dead_profiler_groups();
        // One prefix per run: concurrent profiles (even in one process) never clean up
        // each other's groups.
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let mut cfg = CgroupConfig::new(format!("{PROFILE_PREFIX}/{}-{run}", std::process::id()));
        if boost {
            cfg.prefix_cpu_shares = Some(10 * 1024);
        }
        match CgroupDriver::new(&cfg, sockets) {
            Ok((d, _)) => Ok(Some(d)),
            Err(e) if required => Err(e.into()),
            Err(e) => {
                tracing::info!(reason = %e, "profiling with the process driver");
                Ok(None)
            }
        }
    };
    let cg = match args.driver {
        DriverChoice::Process => None,
        DriverChoice::Cgroup => try_cgroup(true)?,
        DriverChoice::Auto => try_cgroup(false)?,
    };
    match cg {
        Some(d) => {
            let guard = CgroupDriverGuard(d.cgroups().clone());
            Ok((Box::new(d), Some(guard)))
        }
        None => {
            if args.cpu_limit.is_some() {
                return Err(ProfileError::InvalidArgs(
                    "--cpu-limit needs the cgroup driver (root and cgroup cpu controller)".into(),
                ));
            }
            let d = ProcessDriver::new(sockets).map_err(|source| ProfileError::Io {
                path: sockets.to_path_buf(),
                source,
            })?;
            Ok((Box::new(d), None))
        }
    }
}

/// Parent of the profiler's per-run cgroup prefixes (`<pid>-<run>` below it).
const PROFILE_PREFIX: &str = "smart-profile";

/// Remove the groups of profiler runs whose process is gone (a crashed `smart profile`).
fn remove_dead_profiler_groups() {
    let Ok(parent) = smart_instance::cgroup::Cgroups::detect(&CgroupConfig::new(PROFILE_PREFIX))
    else {
        return;
    };
    for name in parent.list() {
        let pid: Option<i32> = name.split('-').next().and_then(|p| p.parse().ok());
        // SAFETY: signal 0 only checks existence.
        let dead = pid.is_some_and(|p| unsafe { libc::kill(p, 0) } != 0);
        if dead
            && let Ok(cg) = smart_instance::cgroup::Cgroups::detect(&CgroupConfig::new(
                Path::new(PROFILE_PREFIX).join(&name),
            ))
        {
            let _ = cg.cleanup_stale();
            let _ = cg.remove_prefix();
        }
    }
}

/// Removes the profiler's cgroup prefix once the runtime is gone.
struct CgroupDriverGuard(smart_instance::cgroup::Cgroups);

impl Drop for CgroupDriverGuard {
    fn drop(&mut self) {
        let _ = self.0.cleanup_stale();
        let _ = self.0.remove_prefix();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Wall-clock time until the next multiple of `interval`.
fn until_aligned(interval: Duration) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let i = interval.as_nanos().max(1);
    let next = (now / i + 1) * i;
    Duration::from_nanos((next - now) as u64)
}

fn iface_bytes(iface: &str, buf: &mut String) -> Option<u64> {
    smart_instance::procfs::read_into(Path::new("/proc/net/dev"), buf).ok()?;
    smart_instance::procfs::parse_net_dev(buf)
        .into_iter()
        .find(|i| i.name == iface)
        .map(|i| {
            if iface == "lo" {
                i.tx_bytes
            } else {
                i.tx_bytes + i.rx_bytes
            }
        })
}

/// Profile the command once (at one client count).
pub fn profile_once(args: &ProfileArgs, clients: Option<u32>) -> Result<RunData, ProfileError> {
    if args.command.is_empty() {
        return Err(ProfileError::InvalidArgs("no COMMAND after --".into()));
    }
    if args.interval < Duration::from_millis(10) || args.duration < args.interval {
        return Err(ProfileError::InvalidArgs(
            "--interval must be >= 10ms and --duration >= --interval".into(),
        ));
    }
    if args.cpu_limit.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
        return Err(ProfileError::InvalidArgs("--cpu-limit must be > 0".into()));
    }
    let sockets = tempfile::tempdir().map_err(|source| ProfileError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let boost = !args.no_boost && is_root();
    let (mut rt, _guard) = make_runtime(args, sockets.path(), boost)?;
    let driver = format!("{:?}", rt.kind());
    let spec = InstanceSpec {
        name: "profiled".into(),
        command: args.command.clone(),
        limits: Limits {
            cpu_cores: args.cpu_limit,
            cpu_shares: None,
            memory_bytes: args.memory_limit,
        },
        nice: boost.then_some(-10),
        stdout: Output::Null,
        stderr: Output::Inherit,
        ..Default::default()
    };
    let probe = rt.start(&spec)?;
    let probes = [probe.clone()];

    let mut load_rt = None;
    if let Some(cmd) = &args.load {
        let n = clients.unwrap_or(1);
        let text = cmd.replace("{clients}", &n.to_string());
        let mut lrt =
            ProcessDriver::new(sockets.path().join("load")).map_err(|source| ProfileError::Io {
                path: sockets.path().to_path_buf(),
                source,
            })?;
        lrt.start(&InstanceSpec {
            name: "load".into(),
            command: vec!["sh".into(), "-c".into(), text],
            env: vec![
                ("SMART_CLIENTS".into(), n.to_string()),
                (
                    "SMART_SERVICE_SOCKET".into(),
                    probe.control_socket.display().to_string(),
                ),
            ],
            stdout: Output::Null,
            stderr: Output::Inherit,
            ..Default::default()
        })?;
        load_rt = Some(lrt);
    }

    let mut sampler = Sampler::new(SamplerConfig {
        nic_capacity_bps: args.nic_bps,
        ..Default::default()
    });
    let mut pollers = UsagePollers::new(Duration::from_millis(100));
    let mut buf = String::new();
    let mut data = RunData {
        clients,
        series: Series::default(),
        working_set: Vec::new(),
        net_source: NetSource::None,
        driver,
        exit: None,
        flags: Vec::new(),
        interval_ms: args.interval.as_millis() as u64,
    };
    let mut iface_prev: Option<(Instant, u64)> = None;
    // Baseline tick, aligned like all others.
    std::thread::sleep(until_aligned(args.interval));
    let mut now = Instant::now();
    let usage = pollers.poll_blocking(&probes, now);
    sampler.sample(&probes, &usage, now);
    if let Some(i) = &args.net_iface {
        iface_prev = iface_bytes(i, &mut buf).map(|b| (now, b));
    }
    let end = now + args.duration;
    while now + args.interval / 2 < end {
        std::thread::sleep(until_aligned(args.interval));
        now = Instant::now();
        let usage = pollers.poll_blocking(&probes, now);
        let smp = sampler.sample(&probes, &usage, now);
        let s = &smp.instances[0];
        let mut net = s.net_bps;
        if net.is_some() {
            data.net_source = s.net_source;
        } else if let Some(i) = &args.net_iface
            && let Some(b) = iface_bytes(i, &mut buf)
        {
            if let Some((t0, b0)) = iface_prev {
                let dt = now.saturating_duration_since(t0).as_secs_f64();
                if dt > 0.0 {
                    net = Some(b.saturating_sub(b0) as f64 * 8.0 / dt);
                    data.net_source = NetSource::Netns;
                }
            }
            iface_prev = Some((now, b));
        }
        if let (Some(cpu), true) = (s.cpu_cores, s.alive) {
            data.series.cpu_cores.push(cpu);
            data.series.net_bps.push(net.unwrap_or(0.0));
            data.series.mem_bytes.push(s.rss_bytes);
            data.working_set.push(s.working_set_bytes);
        }
        if let Some(limit) = args.memory_limit
            && s.working_set_bytes > limit
            && rt.kind() == smart_instance::runtime::DriverKind::Process
        {
            // The process driver cannot make the kernel enforce it: stop the service.
            data.flags.push(format!(
                "working set {} B exceeded --memory-limit {limit} B: stopped",
                s.working_set_bytes
            ));
            break;
        }
        if let InstanceStatus::Exited(x) = rt.status("profiled")? {
            if x.oom_killed {
                data.flags
                    .push("killed by the OOM killer at --memory-limit".into());
            }
            data.exit = Some(x);
            break;
        }
    }
    if let Some(mut lrt) = load_rt {
        let _ = lrt.stop("load", Duration::from_secs(2));
    }
    let exit = rt.stop("profiled", Duration::from_secs(2))?;
    if data.exit.is_none() && !data.flags.is_empty() {
        data.exit = Some(exit);
    }
    if data.series.is_empty() {
        return Err(ProfileError::NoSamples(format!("exit {:?}", data.exit)));
    }
    Ok(data)
}

/// Build a profile from one run.
pub fn profile_from_run(service: &str, run: &RunData, ws_quantile: f64) -> ServiceProfile {
    let mut ws: Vec<f64> = run.working_set.iter().map(|&b| b as f64).collect();
    ws.sort_by(f64::total_cmp);
    let working_set =
        smart_admission::stats::percentile_sorted(&ws, ws_quantile).unwrap_or(0.0) as u64;
    ServiceProfile {
        version: PROFILE_FORMAT_VERSION,
        service: service.to_string(),
        interval_ms: run.interval_ms,
        base: run.series.clone(),
        per_client: None,
        working_set_bytes: working_set,
        video: None,
    }
}

/// Combine profiles of the same service at `ca` and `cb > ca` clients into a base and a
/// per-client increment.
///
/// The two runs are not time-aligned, so increments are computed between matching
/// quantiles (k-th smallest against k-th smallest, over the common length) and laid out in
/// the time order of run `a`: interval t of the increment is the quantile difference at the
/// rank that interval t has in run `a`. The base is `a - ca * increment`, clamped at 0, so
/// it keeps run `a`'s bursts where they happened. Memory gets an increment too (often ~0
/// for a shared-cache distributor, docs/DESIGN.md §5); the working set is `a`'s.
pub fn combine_client_profiles(
    a: &ServiceProfile,
    ca: u32,
    b: &ServiceProfile,
    cb: u32,
) -> Result<ServiceProfile, ProfileError> {
    if cb <= ca {
        return Err(ProfileError::InvalidArgs(format!(
            "client counts must increase ({ca} then {cb})"
        )));
    }
    let n = a.base.len().min(b.base.len());
    if n == 0 {
        return Err(ProfileError::NoSamples("empty profile to combine".into()));
    }
    let dc = (cb - ca) as f64;
    let ranks = |v: &[f64]| -> Vec<usize> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0; v.len()];
        for (rank, i) in idx.into_iter().enumerate() {
            r[i] = rank;
        }
        r
    };
    let inc = |va: &[f64], vb: &[f64]| -> (Vec<f64>, Vec<f64>) {
        let (va, vb) = (&va[..n], &vb[..n]);
        let mut sa = va.to_vec();
        let mut sb = vb.to_vec();
        sa.sort_by(f64::total_cmp);
        sb.sort_by(f64::total_cmp);
        let ra = ranks(va);
        let per: Vec<f64> = (0..n)
            .map(|t| ((sb[ra[t]] - sa[ra[t]]) / dc).max(0.0))
            .collect();
        let base: Vec<f64> = (0..n)
            .map(|t| (va[t] - ca as f64 * per[t]).max(0.0))
            .collect();
        (base, per)
    };
    let (cpu_base, cpu_inc) = inc(&a.base.cpu_cores, &b.base.cpu_cores);
    let (net_base, net_inc) = inc(&a.base.net_bps, &b.base.net_bps);
    let ma: Vec<f64> = a.base.mem_bytes.iter().map(|&m| m as f64).collect();
    let mb: Vec<f64> = b.base.mem_bytes.iter().map(|&m| m as f64).collect();
    let (mem_base, mem_inc) = inc(&ma, &mb);
    Ok(ServiceProfile {
        version: PROFILE_FORMAT_VERSION,
        service: a.service.clone(),
        interval_ms: a.interval_ms,
        base: Series {
            cpu_cores: cpu_base,
            net_bps: net_base,
            mem_bytes: mem_base.into_iter().map(|m| m as u64).collect(),
        },
        per_client: Some(Series {
            cpu_cores: cpu_inc,
            net_bps: net_inc,
            mem_bytes: mem_inc.into_iter().map(|m| m as u64).collect(),
        }),
        working_set_bytes: a.working_set_bytes.max(b.working_set_bytes),
        video: a.video,
    })
}

fn run_label(r: &RunData) -> String {
    match r.clients {
        Some(1) => "1 client".into(),
        Some(n) => format!("{n} clients"),
        None => "run".into(),
    }
}

/// Write the CPU and network plots: one SVG with two panels when `target` ends in `.svg`,
/// else `cpu.svg` and `net.svg` in the directory `target`. Returns the files written.
pub fn plot_svg(runs: &[RunData], target: &Path) -> Result<Vec<PathBuf>, ProfileError> {
    use plotters::prelude::*;
    let single = target.extension().is_some_and(|e| e == "svg");
    if !single {
        std::fs::create_dir_all(target).map_err(|source| ProfileError::Io {
            path: target.to_path_buf(),
            source,
        })?;
    }
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    type Pick = fn(&RunData) -> Vec<f64>;
    let panels: [(&str, &str, Pick); 2] = [
        ("CPU usage", "cores", |r| r.series.cpu_cores.clone()),
        ("Network usage", "Mbit/s", |r| {
            r.series.net_bps.iter().map(|b| b / 1e6).collect()
        }),
    ];
    let draw = |area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
                (title, unit, pick): &(&str, &str, Pick)|
     -> Result<(), String> {
        let series: Vec<(String, Vec<(f64, f64)>)> = runs
            .iter()
            .map(|r| {
                let dt = r.interval_ms as f64 / 1000.0;
                let pts = pick(r)
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| ((i + 1) as f64 * dt, v))
                    .collect();
                (run_label(r), pts)
            })
            .collect();
        let tmax = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|x| x.0))
            .fold(1.0f64, f64::max);
        let ymax = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|x| x.1))
            .fold(0.0f64, f64::max);
        let ymax = if ymax > 0.0 { ymax * 1.1 } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .caption(*title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..tmax, 0f64..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc(*unit)
            .draw()
            .map_err(|e| e.to_string())?;
        for (k, (label, pts)) in series.into_iter().enumerate() {
            let c = colors[k % colors.len()];
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    };
    let perr = |path: &Path| {
        let path = path.to_path_buf();
        move |reason: String| ProfileError::Plot { path, reason }
    };
    if single {
        let root = SVGBackend::new(target, (900, 700)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(target)(e.to_string()))?;
        let (top, bottom) = root.split_vertically(350);
        draw(&top, &panels[0]).map_err(perr(target))?;
        draw(&bottom, &panels[1]).map_err(perr(target))?;
        root.present().map_err(|e| perr(target)(e.to_string()))?;
        Ok(vec![target.to_path_buf()])
    } else {
        let mut files = Vec::new();
        for (name, panel) in ["cpu.svg", "net.svg"].iter().zip(panels.iter()) {
            let path = target.join(name);
            let root = SVGBackend::new(&path, (900, 400)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| perr(&path)(e.to_string()))?;
            draw(&root, panel).map_err(perr(&path))?;
            root.present().map_err(|e| perr(&path)(e.to_string()))?;
            drop(root);
            files.push(path);
        }
        Ok(files)
    }
}

/// Result of `smart profile`.
#[derive(Debug, Clone)]
pub struct ProfileReport {
    /// The profile written.
    pub profile: ServiceProfile,
    /// Where it was written.
    pub out: PathBuf,
    /// The measured runs.
    pub runs: Vec<RunData>,
    /// Plot files written.
    pub plots: Vec<PathBuf>,
    /// The `--json` object (also built without `--json`).
    pub summary: serde_json::Value,
}

fn run_summary(r: &RunData, ws_quantile: f64, nic_bps: u64) -> serde_json::Value {
    let cpus = smart_instance::procfs::online_cpus() as f64;
    let cpu = Summary::of(&r.series.cpu_cores);
    let net = Summary::of(&r.series.net_bps);
    let mem: Vec<f64> = r.series.mem_bytes.iter().map(|&b| b as f64).collect();
    let mut ws: Vec<f64> = r.working_set.iter().map(|&b| b as f64).collect();
    ws.sort_by(f64::total_cmp);
    json!({
        "clients": r.clients,
        "samples": r.series.len(),
        "cpu": { "mean": cpu.mean, "p50": cpu.p50, "p90": cpu.p90, "p95": cpu.p95,
                 "p99": cpu.p99, "max": cpu.max },
        "net": { "mean_bps": net.mean, "p95_bps": net.p95, "max_bps": net.max,
                 "source": r.net_source },
        "memory": {
            "working_set_bytes":
                smart_admission::stats::percentile_sorted(&ws, ws_quantile).unwrap_or(0.0) as u64,
            "rss_max_bytes": Summary::of(&mem).max as u64,
        },
        "distribution": {
            "cpu_pct_of_node": distribution(&r.series.cpu_cores, cpus, DEFAULT_EDGES_PCT),
            "net_pct_of_nic": distribution(&r.series.net_bps, nic_bps as f64, DEFAULT_EDGES_PCT),
        },
        "exit": r.exit,
        "flags": r.flags,
    })
}

/// `smart profile`, printing to stdout. Synchronous.
pub fn run(args: &ProfileArgs) -> Result<ProfileReport, ProfileError> {
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    run_with(args, &mut lock)
}

/// `smart profile`, printing to `w`.
pub fn run_with(args: &ProfileArgs, w: &mut dyn Write) -> Result<ProfileReport, ProfileError> {
    if !(0.0..=1.0).contains(&args.working_set_quantile) {
        return Err(ProfileError::InvalidArgs(
            "--working-set-quantile must be in [0, 1]".into(),
        ));
    }
    let service = args.service.clone().unwrap_or_else(|| {
        args.command
            .first()
            .and_then(|c| Path::new(c).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "service".into())
    });
    let mut counts = args.clients.clone();
    counts.sort_unstable();
    counts.dedup();
    let runs: Vec<RunData> = if counts.is_empty() {
        vec![profile_once(args, None)?]
    } else {
        counts
            .iter()
            .map(|&c| profile_once(args, Some(c)))
            .collect::<Result<_, _>>()?
    };
    let q = args.working_set_quantile;
    let mut profile = profile_from_run(&service, &runs[0], q);
    if runs.len() >= 2 {
        let last = runs.len() - 1;
        let pb = profile_from_run(&service, &runs[last], q);
        profile = combine_client_profiles(&profile, counts[0], &pb, counts[last])?;
    }
    if let (Some(bitrate_bps), Some(d)) = (args.video_bitrate_bps, args.video_duration) {
        profile.video = Some(smart_admission::profile::VideoRef {
            bitrate_bps,
            duration_ms: d.as_millis() as u64,
            window_fraction: args.video_window_fraction,
        });
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{service}.profile.json")));
    std::fs::write(&out, profile.to_json()).map_err(|source| ProfileError::Io {
        path: out.clone(),
        source,
    })?;
    let plots = match &args.plot {
        Some(p) => plot_svg(&runs, p)?,
        None => Vec::new(),
    };

    let first = run_summary(&runs[0], q, args.nic_bps);
    let mut summary = first.clone();
    summary["service"] = json!(service);
    summary["interval_ms"] = json!(profile.interval_ms);
    summary["driver"] = json!(runs[0].driver);
    summary["profile"] = json!(out);
    summary["plots"] = json!(plots);
    summary["runs"] = json!(
        runs.iter()
            .map(|r| run_summary(r, q, args.nic_bps))
            .collect::<Vec<_>>()
    );
    if let Some(pc) = &profile.per_client {
        let c = Summary::of(&pc.cpu_cores);
        let n = Summary::of(&pc.net_bps);
        summary["per_client"] = json!({
            "cpu": { "mean": c.mean, "p95": c.p95 },
            "net": { "mean_bps": n.mean, "p95_bps": n.p95 },
        });
    }

    let werr = |source| ProfileError::Io {
        path: PathBuf::from("<stdout>"),
        source,
    };
    if args.json {
        writeln!(w, "{summary}").map_err(werr)?;
    } else {
        let cpus = smart_instance::procfs::online_cpus() as f64;
        let mut text = format!(
            "profile of {service}: {} run(s), interval {} ms, driver {}\n",
            runs.len(),
            profile.interval_ms,
            runs[0].driver
        );
        for r in &runs {
            let cpu = Summary::of(&r.series.cpu_cores);
            let net = Summary::of(&r.series.net_bps);
            text.push_str(&format!(
                "\n[{}] {} samples; cpu mean {:.3} p95 {:.3} max {:.3} cores; \
                 net mean {:.0} p95 {:.0} bit/s ({:?})\n",
                run_label(r),
                r.series.len(),
                cpu.mean,
                cpu.p95,
                cpu.max,
                net.mean,
                net.p95,
                r.net_source
            ));
            text.push_str(&render_distribution(
                &format!("Distribution - CPU (% of {cpus} cores)"),
                cpus,
                "cores",
                1.0,
                &distribution(&r.series.cpu_cores, cpus, DEFAULT_EDGES_PCT),
            ));
            text.push_str(&render_distribution(
                &format!(
                    "Distribution - network (% of {} Mbit/s)",
                    args.nic_bps / 1_000_000
                ),
                args.nic_bps as f64,
                "Mbit/s",
                1e6,
                &distribution(&r.series.net_bps, args.nic_bps as f64, DEFAULT_EDGES_PCT),
            ));
            for f in &r.flags {
                text.push_str(&format!("  flag: {f}\n"));
            }
        }
        text.push_str(&format!(
            "\nworking set {} bytes; profile written to {}\n",
            profile.working_set_bytes,
            out.display()
        ));
        for p in &plots {
            text.push_str(&format!("plot written to {}\n", p.display()));
        }
        w.write_all(text.as_bytes()).map_err(werr)?;
    }
    Ok(ProfileReport {
        profile,
        out,
        runs,
        plots,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProfileArgs,
    }

    #[test]
    fn command_line_shape() {
        use clap::Parser;
        let c = Cli::try_parse_from([
            "profile",
            "--cpu-limit",
            "0.5",
            "--memory-limit",
            "64M",
            "--interval",
            "500ms",
            "--duration",
            "10s",
            "--load",
            "viewers -n {clients}",
            "--clients",
            "1",
            "10",
            "--json",
            "--",
            "distributor",
            "--port",
            "0",
        ])
        .unwrap();
        let a = c.args;
        assert_eq!(a.cpu_limit, Some(0.5));
        assert_eq!(a.memory_limit, Some(64 << 20));
        assert_eq!(a.interval, Duration::from_millis(500));
        assert_eq!(a.duration, Duration::from_secs(10));
        assert_eq!(a.clients, vec![1, 10]);
        assert!(a.json);
        assert_eq!(a.command, vec!["distributor", "--port", "0"]);
        let d = Cli::try_parse_from(["profile", "--", "x"]).unwrap().args;
        assert_eq!(d.interval, Duration::from_secs(1));
        assert!(d.clients.is_empty());
        assert!(
            Cli::try_parse_from(["profile", "--json"]).is_err(),
            "COMMAND is required"
        );
        assert!(Cli::try_parse_from(["profile", "--memory-limit", "lots", "--", "x"]).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("0").is_err());
    }

    fn prof(cpu: Vec<f64>, net: Vec<f64>) -> ServiceProfile {
        ServiceProfile {
            version: PROFILE_FORMAT_VERSION,
            service: "vod".into(),
            interval_ms: 1000,
            base: Series {
                mem_bytes: vec![100; cpu.len()],
                cpu_cores: cpu,
                net_bps: net,
            },
            per_client: None,
            working_set_bytes: 100,
            video: None,
        }
    }

    #[test]
    fn two_client_counts_give_base_and_increment() {
        // 1 client: base 0.01 core + 0.002/client, 100 kbit/s + 400 kbit/s per client.
        // 10 clients: same shape, shuffled in time.
        let a = prof(vec![0.012, 0.052, 0.012, 0.012], vec![5e5, 5e5, 5e5, 5e5]);
        let b = prof(vec![0.03, 0.03, 0.07, 0.03], vec![4.1e6; 4]);
        let c = combine_client_profiles(&a, 1, &b, 10).unwrap();
        let pc = c.per_client.as_ref().unwrap();
        for (t, v) in pc.cpu_cores.iter().enumerate() {
            assert!((v - 0.002).abs() < 1e-9, "cpu increment at {t}: {v}");
        }
        for v in &pc.net_bps {
            assert!((v - 4.0e5).abs() < 1e-6);
        }
        // The base keeps run a's burst where it was.
        let want = [0.01, 0.05, 0.01, 0.01];
        for (got, w) in c.base.cpu_cores.iter().zip(want) {
            assert!((got - w).abs() < 1e-9, "{:?}", c.base.cpu_cores);
        }
        assert!((c.base.net_bps[0] - 1.0e5).abs() < 1e-6);
        assert!(combine_client_profiles(&a, 10, &b, 1).is_err());
    }

    #[test]
    fn plots_are_svg_files() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunData {
            clients: Some(1),
            series: Series {
                cpu_cores: vec![0.1, 0.5, 0.2],
                net_bps: vec![1e6, 2e6, 0.0],
                mem_bytes: vec![1, 2, 3],
            },
            working_set: vec![1, 2, 3],
            net_source: NetSource::ControlApi,
            driver: "Process".into(),
            exit: None,
            flags: vec![],
            interval_ms: 1000,
        };
        let files = plot_svg(std::slice::from_ref(&run), dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        for f in &files {
            let s = std::fs::read_to_string(f).unwrap();
            assert!(s.starts_with("<svg"), "{}", &s[..50.min(s.len())]);
            assert!(s.contains("1 client"));
            assert!(
                s.contains("<polyline") || s.contains("<path"),
                "a line is drawn"
            );
        }
        let one = dir.path().join("both.svg");
        assert_eq!(plot_svg(&[run], &one).unwrap(), vec![one.clone()]);
        assert!(
            std::fs::read_to_string(&one)
                .unwrap()
                .contains("Network usage")
        );
    }
}
