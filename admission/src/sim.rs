//! `smart sim`: a deterministic discrete-event simulation of a SMART cluster under a
//! video-on-demand workload, run once per estimator × policy on the same arrivals — the
//! experiment the thesis named (§5.6) but never ran.
//!
//! The workload: videos of 300 kbit/s to 4 Mbit/s and 5 min to 2 h (log-uniform), Zipf
//! popularity, Poisson viewer arrivals (optionally with a daily cycle), viewers who leave at
//! the end of the video or earlier (exponential), heterogeneous nodes. A viewer of a video
//! that has a distributor joins it ([`Engine::admit_client`]); the first viewer starts one
//! ([`Engine::admit_service`]); the last to leave ends it. With `--workload heavy` the
//! services are instead standalone services with rare heavy-tailed bursts.
//!
//! Each video has two independent realisations of its usage from the same generator
//! ([`crate::synthetic`]): the *profile* the engine decides with (what Agent99 measured) and
//! the *truth* replayed to measure overload (what the service then did). Every
//! `--sample-every` seconds after the warm-up, the simulator adds up the truth samples of the
//! services on each node (each viewer at its own random offset in the video) and counts the
//! node-intervals in which CPU or network exceeded `VR × capacity`: the measured overload
//! probability, to hold below `1 − C`. With `--correlated`, all services' bursts follow one
//! shared schedule in both realisations and the truth's viewers burst together.
//!
//! Every engine call is timed (one core, no I/O) to report decisions per second and the p99
//! decision latency.
//!
//! ## Layout
//! - [`SimArgs`]: the command-line flags (the root binary mounts them as `smart sim`).
//! - [`run`]: prints the side-by-side table or `--json`; [`run_data`] returns the rows.
//! - [`SimResult`]: one row (estimator × policy).
//! - private: workload generation, the event loop generic over the estimator.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::IsTerminal;
use std::time::Instant;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::engine::{ClientId, Engine, EngineConfig, EngineError, NodeId, NodeSpec, ServiceId};
use crate::estimator::{
    Chernoff, Empirical, Estimator, EstimatorKind, Gaussian, Mean, Peak, Resource,
};
use crate::profile::ServiceProfile;
use crate::synthetic::{self, Gen, HeavySpec, VideoSpec};
use crate::tree::Policy;

/// What kind of services arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Smart-GloVE video distributors with viewers (thesis chapter 5).
    Vod,
    /// Standalone services with rare heavy-tailed bursts and no clients.
    Heavy,
}

/// Flags of `smart sim`.
#[derive(Clone, Debug, PartialEq, Serialize, clap::Args)]
pub struct SimArgs {
    /// Seed of every random choice: same seed, same output.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of nodes (classes cycle: 2 cores/2 GiB/100 Mbit/s as in the thesis,
    /// 4 cores/8 GiB/1 Gbit/s twice, 8 cores/16 GiB/1 Gbit/s).
    #[arg(long, default_value_t = 20)]
    pub nodes: usize,
    /// Simulated hours.
    #[arg(long, default_value_t = 3.0)]
    pub hours: f64,
    /// Hours at the start not counted in utilisation and overload (the cluster fills up).
    #[arg(long, default_value_t = 1.0)]
    pub warmup_hours: f64,
    /// Number of videos (or of heavy-tailed service profiles).
    #[arg(long, default_value_t = 500)]
    pub videos: usize,
    /// Zipf exponent of video popularity.
    #[arg(long, default_value_t = 0.8)]
    pub zipf: f64,
    /// Mean arrivals per second (viewers, or services with `--workload heavy`).
    #[arg(long, default_value_t = 8.0)]
    pub arrivals_per_sec: f64,
    /// Modulate arrivals by ±50 % over a 24 h cycle.
    #[arg(long)]
    pub daily_cycle: bool,
    /// Mean time a viewer (or heavy service) stays, in seconds; viewers also stop at the end
    /// of the video.
    #[arg(long, default_value_t = 1800.0)]
    pub mean_stay_s: f64,
    /// Estimators to compare.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = EstimatorKind::ALL)]
    pub estimators: Vec<EstimatorKind>,
    /// Placement policies to compare.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Policy::ALL)]
    pub policies: Vec<Policy>,
    /// Intervals per profile (the engine's grid).
    #[arg(long, default_value_t = 256)]
    pub grid: usize,
    /// Reference value VR: fraction of each node's CPU and network that load may reach.
    #[arg(long, default_value_t = 0.9)]
    pub vr: f64,
    /// Confidence C (per node and cluster).
    #[arg(long, default_value_t = 0.95)]
    pub conf: f64,
    /// Seconds between overload samples.
    #[arg(long, default_value_t = 10)]
    pub sample_every: u64,
    /// Longest chain of migrations per decision (0 disables Migrate the Smallest).
    #[arg(long, default_value_t = 2)]
    pub ms_depth: u32,
    /// Workload kind.
    #[arg(long, value_enum, default_value_t = Workload::Vod)]
    pub workload: Workload,
    /// All services burst together (one shared burst schedule), and so do the viewers.
    #[arg(long)]
    pub correlated: bool,
    /// Tell the engine that viewers burst together (sum their increments unshifted).
    #[arg(long)]
    pub align_clients: bool,
    /// Print one JSON object per estimator × policy instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl Default for SimArgs {
    fn default() -> Self {
        SimArgs {
            seed: 1,
            nodes: 20,
            hours: 3.0,
            warmup_hours: 1.0,
            videos: 500,
            zipf: 0.8,
            arrivals_per_sec: 8.0,
            daily_cycle: false,
            mean_stay_s: 1800.0,
            estimators: EstimatorKind::ALL.to_vec(),
            policies: Policy::ALL.to_vec(),
            grid: 256,
            vr: 0.9,
            conf: 0.95,
            sample_every: 10,
            ms_depth: 2,
            workload: Workload::Vod,
            correlated: false,
            align_clients: false,
            json: false,
        }
    }
}

/// Why the simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A flag is out of range.
    #[error("invalid simulation argument: {0}")]
    BadArgs(String),
    /// The engine refused a node or profile.
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    /// JSON output failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// One row of results: one estimator with one policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimResult {
    /// Estimator name.
    pub estimator: String,
    /// Policy name.
    pub policy: String,
    /// Services (distributors) admitted over the run.
    pub admitted_services: u64,
    /// Clients (viewers) admitted over the run.
    pub admitted_clients: u64,
    /// Requests rejected (a viewer refused, with or without a new distributor).
    pub rejected: u64,
    /// Service admissions rejected.
    pub rejected_services: u64,
    /// Client admissions rejected (including those whose new distributor was refused).
    pub rejected_clients: u64,
    /// Migrations ordered by Migrate the Smallest.
    pub migrations: u64,
    /// Fraction of measured node-intervals (nodes with a service) over `VR × capacity` in
    /// CPU or network.
    pub overload_probability: f64,
    /// Same, CPU only.
    pub overload_cpu: f64,
    /// Same, network only.
    pub overload_net: f64,
    /// Node-intervals measured.
    pub node_intervals: u64,
    /// Mean CPU use / capacity over all nodes and samples (truth).
    pub mean_util_cpu: f64,
    /// Mean network use / capacity (truth).
    pub mean_util_net: f64,
    /// Mean reserved memory / capacity.
    pub mean_util_mem: f64,
    /// Mean concurrent services at the samples.
    pub mean_services: f64,
    /// Mean concurrent clients at the samples.
    pub mean_clients: f64,
    /// Admission decisions timed.
    pub decisions: u64,
    /// Admission decisions per second of engine time (one core).
    pub decisions_per_sec: f64,
    /// Median decision latency in µs.
    pub decision_p50_us: f64,
    /// 99th percentile decision latency in µs.
    pub decision_p99_us: f64,
    /// Wall time of this row in seconds.
    pub wall_seconds: f64,
}

/// Truth series length in intervals (longer than the grid: the truth is another run).
const TRUTH_LEN: usize = 1024;

struct Item {
    profile: ServiceProfile,
    truth_base: [Vec<u32>; 2],
    truth_client: Option<[Vec<u32>; 2]>,
}

struct Arrival {
    at_ms: u64,
    item: u32,
    stay_ms: u64,
    phase: u32,
}

struct World {
    items: Vec<Item>,
    arrivals: Vec<Arrival>,
    specs: Vec<NodeSpec>,
}

fn node_spec(i: usize, vr: f64, conf: f64) -> NodeSpec {
    const GIB: u64 = 1 << 30;
    let mut s = match i % 4 {
        0 => NodeSpec::new(2 * GIB, 2.0, 100e6),
        1 | 2 => NodeSpec::new(8 * GIB, 4.0, 1e9),
        _ => NodeSpec::new(16 * GIB, 8.0, 1e9),
    };
    s.vr = vr;
    s.conf = conf;
    s
}

fn to_units(r: Resource, v: &[f64]) -> Vec<u32> {
    v.iter()
        .map(|x| r.to_units(*x).min(u32::MAX as u64) as u32)
        .collect()
}

fn log_uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp()
}

fn validate(a: &SimArgs) -> Result<(), SimError> {
    let bad = |m: &str| Err(SimError::BadArgs(m.to_string()));
    if a.nodes == 0 || a.videos == 0 {
        return bad("--nodes and --videos must be at least 1");
    }
    let hours_ok = a.hours > 0.0 && a.hours <= 24.0 * 30.0;
    if !(hours_ok && (0.0..a.hours).contains(&a.warmup_hours)) {
        return bad("--hours must be in (0, 720] and --warmup-hours in [0, hours)");
    }
    if !(a.arrivals_per_sec > 0.0 && a.arrivals_per_sec <= 10_000.0) {
        return bad("--arrivals-per-sec must be in (0, 10000]");
    }
    if !(a.vr > 0.0 && a.vr <= 1.0 && a.conf > 0.0 && a.conf < 1.0) {
        return bad("--vr must be in (0, 1] and --conf in (0, 1)");
    }
    if a.grid == 0 || a.grid > 1 << 16 || a.sample_every == 0 {
        return bad("--grid must be in [1, 65536] and --sample-every at least 1");
    }
    if !(a.zipf >= 0.0 && a.zipf.is_finite() && a.mean_stay_s > 0.0) {
        return bad("--zipf must be ≥ 0 and --mean-stay-s > 0");
    }
    if a.estimators.is_empty() || a.policies.is_empty() {
        return bad("at least one estimator and one policy");
    }
    Ok(())
}

fn build_world(a: &SimArgs) -> World {
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let shared_profile = a.correlated.then(|| rng.random::<u64>());
    let shared_truth = a.correlated.then(|| rng.random::<u64>());
    let mut items = Vec::with_capacity(a.videos);
    let mut durations = Vec::with_capacity(a.videos);
    for _ in 0..a.videos {
        let (pseed, tseed) = (rng.random::<u64>(), rng.random::<u64>());
        let pg = Gen {
            len: a.grid,
            seed: pseed,
            shared: shared_profile,
        };
        let tg = Gen {
            len: TRUTH_LEN,
            seed: tseed,
            shared: shared_truth,
        };
        let (profile, truth) = match a.workload {
            Workload::Vod => {
                let v = VideoSpec {
                    bitrate_bps: log_uniform(&mut rng, 300e3, 4e6),
                    duration_s: log_uniform(&mut rng, 300.0, 7200.0),
                    cache_fraction: 0.2,
                };
                durations.push(v.duration_s);
                (
                    synthetic::distributor(&v, &pg),
                    synthetic::distributor(&v, &tg),
                )
            }
            Workload::Heavy => {
                let h = HeavySpec {
                    mean_cpu_cores: rng.random_range(0.1..0.5),
                    mean_net_bps: rng.random_range(2e6..20e6),
                    ws_bytes: 128 << 20,
                    burst_prob: 0.08,
                    tail_alpha: 1.5,
                };
                durations.push(f64::INFINITY);
                (
                    synthetic::heavy_tailed(&h, &pg),
                    synthetic::heavy_tailed(&h, &tg),
                )
            }
        };
        items.push(Item {
            truth_base: [
                to_units(Resource::Cpu, &truth.base.cpu_cores),
                to_units(Resource::Net, &truth.base.net_bps),
            ],
            truth_client: truth.per_client.as_ref().map(|pc| {
                [
                    to_units(Resource::Cpu, &pc.cpu_cores),
                    to_units(Resource::Net, &pc.net_bps),
                ]
            }),
            profile,
        });
    }
    // Zipf CDF over items by index (item 0 most popular).
    let mut cdf: Vec<f64> = (1..=a.videos).map(|k| (k as f64).powf(-a.zipf)).collect();
    let total: f64 = cdf.iter().sum();
    let mut acc = 0.0;
    for c in cdf.iter_mut() {
        acc += *c / total;
        *c = acc;
    }
    let horizon = a.hours * 3600.0;
    let lmax = if a.daily_cycle { 1.5 } else { 1.0 } * a.arrivals_per_sec;
    let mut arrivals = Vec::new();
    let mut t = 0.0;
    loop {
        t += -(1.0 - rng.random::<f64>()).ln() / lmax;
        if t >= horizon {
            break;
        }
        if a.daily_cycle {
            let rate = 1.0 + 0.5 * (2.0 * std::f64::consts::PI * t / 86_400.0).sin();
            if rng.random::<f64>() * 1.5 > rate {
                continue;
            }
        }
        let u = rng.random::<f64>();
        let item = cdf.partition_point(|c| *c < u).min(a.videos - 1);
        let stay = (-(1.0 - rng.random::<f64>()).ln() * a.mean_stay_s).min(durations[item]);
        arrivals.push(Arrival {
            at_ms: (t * 1000.0) as u64,
            item: item as u32,
            stay_ms: (stay * 1000.0).max(1000.0) as u64,
            phase: rng.random_range(0..TRUTH_LEN as u32),
        });
    }
    let specs = (0..a.nodes).map(|i| node_spec(i, a.vr, a.conf)).collect();
    World {
        items,
        arrivals,
        specs,
    }
}

/// Runs every estimator × policy and returns the rows (no output except the progress bar).
pub fn run_data(args: &SimArgs) -> Result<Vec<SimResult>, SimError> {
    validate(args)?;
    let world = build_world(args);
    let combos: Vec<(EstimatorKind, Policy)> = args
        .estimators
        .iter()
        .flat_map(|e| args.policies.iter().map(move |p| (*e, *p)))
        .collect();
    let pb = if std::io::stderr().is_terminal() {
        let pb = ProgressBar::new((combos.len() * world.arrivals.len()) as u64);
        pb.set_style(
            ProgressStyle::with_template("{msg:>22} [{bar:40}] {percent}% eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    } else {
        ProgressBar::hidden()
    };
    let mut out = Vec::with_capacity(combos.len());
    for (kind, policy) in combos {
        pb.set_message(format!("{} {}", kind.name(), policy.name()));
        let r = match kind {
            EstimatorKind::Empirical => simulate(Empirical, policy, &world, args, &pb),
            EstimatorKind::Gaussian => simulate(Gaussian, policy, &world, args, &pb),
            EstimatorKind::Chernoff => simulate(Chernoff, policy, &world, args, &pb),
            EstimatorKind::Peak => simulate(Peak, policy, &world, args, &pb),
            EstimatorKind::Mean => simulate(Mean, policy, &world, args, &pb),
        }?;
        tracing::debug!(estimator = %r.estimator, policy = %r.policy, wall_s = r.wall_seconds, "sim row done");
        out.push(r);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// Runs the simulation and prints the table (or JSON with `--json`) on stdout.
pub fn run(args: &SimArgs) -> Result<(), SimError> {
    let rows = run_data(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", table(args, &rows));
    }
    Ok(())
}

/// The side-by-side table, with each row's admissions relative to `peak` under the same
/// policy.
pub fn table(args: &SimArgs, rows: &[SimResult]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "smart sim: {:?} workload, {} nodes, {} h ({} h warm-up), {} items, zipf {}, {}/s arrivals{}{}, VR {} C {}, seed {}",
        args.workload,
        args.nodes,
        args.hours,
        args.warmup_hours,
        args.videos,
        args.zipf,
        args.arrivals_per_sec,
        if args.daily_cycle {
            ", daily cycle"
        } else {
            ""
        },
        if args.correlated {
            ", correlated bursts"
        } else {
            ""
        },
        args.vr,
        args.conf,
        args.seed
    );
    let _ = writeln!(
        s,
        "{:<10} {:<9} {:>8} {:>8} {:>9} {:>9} {:>6} {:>8} {:>6} {:>6} {:>6} {:>9} {:>9} {:>8} {:>7}",
        "estimator",
        "policy",
        "svc ok",
        "svc rej",
        "cli ok",
        "cli rej",
        "migr",
        "overload",
        "cpu%",
        "net%",
        "mem%",
        "vs peak",
        "dec/s",
        "p99 µs",
        "wall s"
    );
    for r in rows {
        let peak = rows
            .iter()
            .find(|p| p.estimator == "peak" && p.policy == r.policy);
        let vs = match peak {
            Some(p) if p.admitted_clients > 0 || p.admitted_services > 0 => {
                let (a, b) = if p.admitted_clients > 0 {
                    (r.admitted_clients, p.admitted_clients)
                } else {
                    (r.admitted_services, p.admitted_services)
                };
                format!("{:.2}x", a as f64 / b as f64)
            }
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "{:<10} {:<9} {:>8} {:>8} {:>9} {:>9} {:>6} {:>7.2}% {:>6.1} {:>6.1} {:>6.1} {:>9} {:>9.0} {:>8.1} {:>7.1}",
            r.estimator,
            r.policy,
            r.admitted_services,
            r.rejected_services,
            r.admitted_clients,
            r.rejected_clients,
            r.migrations,
            100.0 * r.overload_probability,
            100.0 * r.mean_util_cpu,
            100.0 * r.mean_util_net,
            100.0 * r.mean_util_mem,
            vs,
            r.decisions_per_sec,
            r.decision_p99_us,
            r.wall_seconds
        );
    }
    let _ = writeln!(
        s,
        "overload: share of node-intervals (nodes with a service) whose replayed usage exceeded VR x capacity; goal <= {:.0}%. vs peak: clients admitted (services for --workload heavy) relative to peak, same policy.",
        100.0 * (1.0 - args.conf)
    );
    s
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Departure {
    at_ms: u64,
    seq: u64,
    item: u32,
    client: Option<ClientId>,
    service: ServiceId,
}

struct Live {
    service: ServiceId,
    clients: Vec<(ClientId, u32)>,
}

fn simulate<E: Estimator>(
    est: E,
    policy: Policy,
    w: &World,
    a: &SimArgs,
    pb: &ProgressBar,
) -> Result<SimResult, SimError> {
    let started = Instant::now();
    let name = est.name();
    let cfg = EngineConfig {
        grid: a.grid,
        policy,
        cluster_conf: a.conf,
        ms_depth: a.ms_depth,
        align_clients: a.align_clients,
        ..EngineConfig::default()
    };
    let mut eng = Engine::new(est, cfg)?;
    for (i, s) in w.specs.iter().enumerate() {
        eng.add_node(NodeId(i as u64), *s)?;
    }
    let profiles = w
        .items
        .iter()
        .map(|it| eng.register_profile(&it.profile))
        .collect::<Result<Vec<_>, _>>()?;
    let vod = a.workload == Workload::Vod;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| SimError::BadArgs(format!("histogram: {e}")))?;
    let mut busy_ns: u128 = 0;
    let mut timed = |hist: &mut Histogram<u64>, ns: u128| {
        busy_ns += ns;
        let _ = hist.record((ns as u64).max(1));
    };

    let mut live: Vec<Option<Live>> = (0..w.items.len()).map(|_| None).collect();
    let mut heavy_live: HashMap<ServiceId, u32> = HashMap::new();
    let mut deps: BinaryHeap<Reverse<Departure>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut r = SimResult {
        estimator: name.into(),
        policy: policy.name().into(),
        admitted_services: 0,
        admitted_clients: 0,
        rejected: 0,
        rejected_services: 0,
        rejected_clients: 0,
        migrations: 0,
        overload_probability: 0.0,
        overload_cpu: 0.0,
        overload_net: 0.0,
        node_intervals: 0,
        mean_util_cpu: 0.0,
        mean_util_net: 0.0,
        mean_util_mem: 0.0,
        mean_services: 0.0,
        mean_clients: 0.0,
        decisions: 0,
        decisions_per_sec: 0.0,
        decision_p50_us: 0.0,
        decision_p99_us: 0.0,
        wall_seconds: 0.0,
    };
    let horizon_ms = (a.hours * 3_600_000.0) as u64;
    let warm_ms = (a.warmup_hours * 3_600_000.0) as u64;
    let step_ms = a.sample_every * 1000;
    let mut next_sample = warm_ms;
    let (mut over_any, mut over_cpu, mut over_net) = (0u64, 0u64, 0u64);
    let (mut u_cpu, mut u_net, mut u_mem, mut samples) = (0.0, 0.0, 0.0, 0u64);
    let (mut sum_services, mut sum_clients) = (0u64, 0u64);
    let limits: Vec<[f64; 2]> = w
        .specs
        .iter()
        .map(|s| [s.vr * s.cpu_cores / 1e-6, s.vr * s.net_bps / 1e3])
        .collect();
    let caps: Vec<[f64; 2]> = w
        .specs
        .iter()
        .map(|s| [s.cpu_cores / 1e-6, s.net_bps / 1e3])
        .collect();
    let mut use_ = vec![[0u64; 2]; w.specs.len()];
    let mut count = vec![0u32; w.specs.len()];
    let mut ai = 0usize;
    let mut since_tick = 0u64;

    loop {
        let ta = w.arrivals.get(ai).map_or(u64::MAX, |x| x.at_ms);
        let td = deps.peek().map_or(u64::MAX, |d| d.0.at_ms);
        let ts = if next_sample < horizon_ms {
            next_sample
        } else {
            u64::MAX
        };
        let t = ta.min(td).min(ts);
        if t == u64::MAX || t >= horizon_ms {
            break;
        }
        if td == t {
            let Reverse(d) = deps.pop().expect("peeked");
            if let Some(c) = d.client {
                eng.release_client(c)?;
                let l = live[d.item as usize].as_mut().expect("live video");
                if let Some(i) = l.clients.iter().position(|(x, _)| *x == c) {
                    l.clients.swap_remove(i);
                }
                if l.clients.is_empty() {
                    eng.release_service(l.service)?;
                    live[d.item as usize] = None;
                }
            } else {
                eng.release_service(d.service)?;
                heavy_live.remove(&d.service);
            }
            continue;
        }
        if ts == t {
            next_sample += step_ms;
            let s = (t / 1000) as usize;
            for (u, c) in use_.iter_mut().zip(count.iter_mut()) {
                *u = [0, 0];
                *c = 0;
            }
            let mut add = |svc: ServiceId, item: &Item, clients: &[(ClientId, u32)]| {
                let node = eng.node_of(svc).expect("live service is placed").0 as usize;
                count[node] += 1;
                for res in 0..2 {
                    let b = &item.truth_base[res];
                    let mut u = b[s % b.len()] as u64;
                    if let Some(tc) = &item.truth_client {
                        let v = &tc[res];
                        for (_, ph) in clients {
                            let off = if a.correlated { 0 } else { *ph as usize };
                            u += v[(s + off) % v.len()] as u64;
                        }
                    }
                    use_[node][res] += u;
                }
            };
            let mut nsvc = 0u64;
            let mut ncli = 0u64;
            for (i, l) in live.iter().enumerate() {
                if let Some(l) = l {
                    add(l.service, &w.items[i], &l.clients);
                    nsvc += 1;
                    ncli += l.clients.len() as u64;
                }
            }
            for (svc, item) in &heavy_live {
                add(*svc, &w.items[*item as usize], &[]);
                nsvc += 1;
            }
            sum_services += nsvc;
            sum_clients += ncli;
            samples += 1;
            let keys = eng.node_keys();
            for (n, key) in keys.iter().enumerate() {
                let i = key.0 as usize;
                debug_assert_eq!(n, i);
                let (uc, un) = (use_[i][0] as f64, use_[i][1] as f64);
                u_cpu += uc / caps[i][0];
                u_net += un / caps[i][1];
                if let Some(st) = eng.node_status(*key) {
                    u_mem += st.used_mem as f64 / st.spec.mem_bytes as f64;
                }
                if count[i] > 0 {
                    r.node_intervals += 1;
                    let oc = uc > limits[i][0];
                    let on = un > limits[i][1];
                    over_cpu += oc as u64;
                    over_net += on as u64;
                    over_any += (oc || on) as u64;
                }
            }
            continue;
        }
        // Arrival.
        let arr = &w.arrivals[ai];
        ai += 1;
        since_tick += 1;
        if since_tick == 1024 {
            pb.inc(since_tick);
            since_tick = 0;
        }
        let item = arr.item as usize;
        let leave = arr.at_ms + arr.stay_ms;
        seq += 1;
        if !vod {
            let t0 = Instant::now();
            let res = eng.admit_service(profiles[item], 0);
            timed(&mut hist, t0.elapsed().as_nanos());
            match res {
                Ok(d) => {
                    r.admitted_services += 1;
                    r.migrations += d.migrations.len() as u64;
                    heavy_live.insert(d.service, arr.item);
                    deps.push(Reverse(Departure {
                        at_ms: leave,
                        seq,
                        item: arr.item,
                        client: None,
                        service: d.service,
                    }));
                }
                Err(_) => {
                    r.rejected_services += 1;
                    r.rejected += 1;
                }
            }
            continue;
        }
        match &mut live[item] {
            Some(l) => {
                let t0 = Instant::now();
                let res = eng.admit_client(l.service);
                timed(&mut hist, t0.elapsed().as_nanos());
                match res {
                    Ok(cd) => {
                        r.admitted_clients += 1;
                        r.migrations += cd.migrations.len() as u64;
                        l.clients.push((cd.client, arr.phase));
                        deps.push(Reverse(Departure {
                            at_ms: leave,
                            seq,
                            item: arr.item,
                            client: Some(cd.client),
                            service: l.service,
                        }));
                    }
                    Err(_) => {
                        r.rejected_clients += 1;
                        r.rejected += 1;
                    }
                }
            }
            None => {
                let t0 = Instant::now();
                let res = eng.admit_service(profiles[item], 1);
                timed(&mut hist, t0.elapsed().as_nanos());
                match res {
                    Ok(d) => {
                        r.admitted_services += 1;
                        r.admitted_clients += 1;
                        r.migrations += d.migrations.len() as u64;
                        let c = d.clients[0];
                        live[item] = Some(Live {
                            service: d.service,
                            clients: vec![(c, arr.phase)],
                        });
                        deps.push(Reverse(Departure {
                            at_ms: leave,
                            seq,
                            item: arr.item,
                            client: Some(c),
                            service: d.service,
                        }));
                    }
                    Err(_) => {
                        r.rejected_services += 1;
                        r.rejected_clients += 1;
                        r.rejected += 1;
                    }
                }
            }
        }
    }
    pb.inc(since_tick + (w.arrivals.len() - ai) as u64);
    let ni = r.node_intervals.max(1) as f64;
    r.overload_probability = over_any as f64 / ni;
    r.overload_cpu = over_cpu as f64 / ni;
    r.overload_net = over_net as f64 / ni;
    let nsamp = (samples * w.specs.len() as u64).max(1) as f64;
    r.mean_util_cpu = u_cpu / nsamp;
    r.mean_util_net = u_net / nsamp;
    r.mean_util_mem = u_mem / nsamp;
    r.mean_services = sum_services as f64 / samples.max(1) as f64;
    r.mean_clients = sum_clients as f64 / samples.max(1) as f64;
    r.decisions = hist.len();
    r.decisions_per_sec = if busy_ns > 0 {
        r.decisions as f64 / (busy_ns as f64 / 1e9)
    } else {
        0.0
    };
    r.decision_p50_us = hist.value_at_quantile(0.5) as f64 / 1e3;
    r.decision_p99_us = hist.value_at_quantile(0.99) as f64 / 1e3;
    r.wall_seconds = started.elapsed().as_secs_f64();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SimArgs {
        SimArgs {
            nodes: 4,
            hours: 0.5,
            warmup_hours: 0.1,
            videos: 40,
            arrivals_per_sec: 2.0,
            grid: 64,
            sample_every: 30,
            ..SimArgs::default()
        }
    }

    #[test]
    fn same_seed_same_admissions_and_peak_never_overloads_less_than_mean() {
        let mut a = small();
        a.estimators = vec![
            EstimatorKind::Empirical,
            EstimatorKind::Peak,
            EstimatorKind::Mean,
        ];
        a.policies = vec![Policy::WorstFit];
        let r1 = run_data(&a).unwrap();
        let r2 = run_data(&a).unwrap();
        let key = |r: &SimResult| {
            (
                r.admitted_services,
                r.admitted_clients,
                r.rejected,
                r.migrations,
                r.node_intervals,
            )
        };
        assert_eq!(
            r1.iter().map(key).collect::<Vec<_>>(),
            r2.iter().map(key).collect::<Vec<_>>()
        );
        let (emp, peak, mean) = (&r1[0], &r1[1], &r1[2]);
        assert!(emp.admitted_clients + emp.rejected_clients > 0);
        // Peak reserves the most, so it admits no more than empirical, and mean packs most.
        assert!(peak.admitted_clients <= emp.admitted_clients);
        assert!(emp.admitted_clients <= mean.admitted_clients);
        assert!(peak.overload_probability <= mean.overload_probability);
        let json = serde_json::to_value(&r1).unwrap();
        for k in [
            "estimator",
            "policy",
            "admitted_services",
            "admitted_clients",
            "rejected",
            "migrations",
            "overload_probability",
            "decisions_per_sec",
            "decision_p99_us",
        ] {
            assert!(json[0].get(k).is_some(), "missing {k}");
        }
    }

    #[test]
    fn heavy_and_correlated_workloads_run_and_rank_the_baselines() {
        let a = SimArgs {
            workload: Workload::Heavy,
            arrivals_per_sec: 0.2,
            estimators: vec![EstimatorKind::Peak, EstimatorKind::Mean],
            policies: vec![Policy::FirstFit],
            ..small()
        };
        let r = run_data(&a).unwrap();
        assert_eq!((r[0].admitted_clients, r[1].admitted_clients), (0, 0));
        assert!(r[0].admitted_services > 0);
        assert!(r[0].admitted_services <= r[1].admitted_services);
        assert!(r[0].overload_probability <= r[1].overload_probability);
        let c = SimArgs {
            correlated: true,
            align_clients: true,
            estimators: vec![EstimatorKind::Empirical],
            policies: vec![Policy::BestFit],
            ..small()
        };
        let r = run_data(&c).unwrap();
        assert!(r[0].admitted_clients > 0 && r[0].node_intervals > 0);
        assert!(table(&c, &r).contains("correlated bursts"));
    }

    #[test]
    fn bad_args_are_refused() {
        let a = SimArgs {
            conf: 1.5,
            ..small()
        };
        assert!(matches!(run_data(&a), Err(SimError::BadArgs(_))));
    }
}
