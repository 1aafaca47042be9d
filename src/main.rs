//! `smart`: the SMART peer binary and its admin commands. See the README.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use smart::config::NodeConfig;
use smart::node::{self, Faults, supervisor::Exit};
use smart_api::client::ApiClient;
use smart_supervision::ClusterKey;

/// Exit code when the supervision tree escalates (BSD EX_SOFTWARE): a service manager
/// restarts the node.
const EXIT_ESCALATED: u8 = 70;

#[derive(Parser)]
#[command(
    name = "smart",
    version,
    about = "SMART: many streaming services on a shared cluster, with QoS and no single point of failure"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a SMART peer.
    Node {
        /// The node's TOML configuration (see config/example.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show members and the Control as a node sees them.
    Status(StatusArgs),
    /// Run a local cluster on loopback and show a Control failover.
    Demo(smart::demo::DemoArgs),
    /// Simulate admission control and placement under a VoD workload (deterministic).
    Sim(smart_admission::sim::SimArgs),
    /// Agent99: profile a service's resource usage and write its profile.
    Profile(smart_instance::profiler::ProfileArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Move every service off a node (maintenance): live migration where the workload
    /// speaks the control API, restart elsewhere otherwise.
    Drain(DrainArgs),
    /// A GloVE video distributor (what Agent86 runs for a video; see `vod distributor`).
    Distributor(DistributorArgs),
    /// Make a cluster's keys in a directory: cluster.key, n<ID>.key per node, nodes.pub.
    /// Existing keys are kept.
    Keys(KeysArgs),
    /// Repair a stopped node's data dir: set its highest epoch (e.g. after a corrupt or
    /// forged value made it unusable). Use the cluster's highest epoch from `smart status`.
    Repair(RepairArgs),
}

#[derive(clap::Args)]
struct KeysArgs {
    /// Where to write the keys.
    #[arg(long)]
    dir: PathBuf,
    /// The node ids, comma-separated (e.g. 1,2,3).
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<u64>,
}

#[derive(clap::Args)]
struct RepairArgs {
    /// The node's data directory (`data_dir` of its config).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Or the node's config, to take `data_dir` from.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The highest epoch to store: at least the cluster's (`smart status` on a healthy
    /// node shows `highest epoch`).
    #[arg(long)]
    epoch: u64,
}

#[derive(clap::Args)]
struct DrainArgs {
    /// The node id to drain.
    node: u64,
    /// A node config to take an address and the cluster key from.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Any node's `listen` address (default: the `listen` of `--config`).
    #[arg(long)]
    connect: Option<String>,
    /// The cluster key file (overrides the one in `--config`).
    #[arg(long)]
    key: Option<PathBuf>,
}

#[derive(clap::Args)]
struct DistributorArgs {
    /// Address to serve viewers on.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// The origin's URL.
    #[arg(long)]
    origin: String,
    /// Fraction of each video kept in the shared cache.
    #[arg(long, default_value_t = 0.2)]
    window_fraction: f64,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Control failover time (kill -9 until every survivor reports the new Control).
    Failover(smart::demo::FailoverBenchArgs),
}

#[derive(clap::Args)]
struct StatusArgs {
    /// A node's `listen` address. Default: the `listen` of `--config`.
    #[arg(long)]
    connect: Option<String>,
    /// A node config to take the address and the cluster key from.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The cluster key file (overrides the one in `--config`).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SMART_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let cfg = match &args.config {
        Some(p) => Some(NodeConfig::load(p)?),
        None => None,
    };
    let addr = match (&args.connect, &cfg) {
        (Some(a), _) => a.clone(),
        (None, Some(c)) => c.listen.to_string(),
        (None, None) => bail!("give --connect ADDR (with --key FILE) or --config FILE"),
    };
    let key_path = match (&args.key, &cfg) {
        (Some(k), _) => k.clone(),
        (None, Some(c)) => c.cluster_key_file.clone(),
        (None, None) => bail!("give --key FILE or --config FILE for the cluster key"),
    };
    let key = ClusterKey::load(&key_path)?;
    let client = ApiClient::connect(&addr, key)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let s = client.status().await.context("status request")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    match &s.control {
        Some(c) => println!("control: n{} at epoch {}", c.node_id, c.epoch),
        None => println!("control: none (election in progress)"),
    }
    println!(
        "answered by n{} (highest epoch {})",
        s.node_id, s.highest_epoch
    );
    println!(
        "{:<6} {:<22} {:<6} {:<28} {:>10} {:>14}",
        "node", "address", "alive", "roles", "heard(ms)", "incarn"
    );
    for m in &s.members {
        println!(
            "{:<6} {:<22} {:<6} {:<28} {:>10} {:>14}",
            format!("n{}", m.node_id),
            m.address,
            if m.alive { "yes" } else { "no" },
            m.roles.join(","),
            m.last_heard_ms,
            m.incarnation
        );
    }
    let nonzero: Vec<String> = s
        .counters
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("counters: {}", nonzero.join(" "));
    Ok(())
}

async fn connect(
    config: &Option<PathBuf>,
    connect: &Option<String>,
    key: &Option<PathBuf>,
) -> anyhow::Result<ApiClient> {
    let cfg = match config {
        Some(p) => Some(NodeConfig::load(p)?),
        None => None,
    };
    let addr = match (connect, &cfg) {
        (Some(a), _) => a.clone(),
        (None, Some(c)) => c.listen.to_string(),
        (None, None) => bail!("give --connect ADDR (with --key FILE) or --config FILE"),
    };
    let key_path = match (key, &cfg) {
        (Some(k), _) => k.clone(),
        (None, Some(c)) => c.cluster_key_file.clone(),
        (None, None) => bail!("give --key FILE or --config FILE for the cluster key"),
    };
    let key = ClusterKey::load(&key_path)?;
    ApiClient::connect(&addr, key)
        .await
        .with_context(|| format!("connecting to {addr}"))
}

async fn drain(args: DrainArgs) -> anyhow::Result<()> {
    let client = connect(&args.config, &args.connect, &args.key)
        .await?
        .with_timeout(std::time::Duration::from_secs(30));
    match client
        .request(smart_api::Request::Drain { node: args.node })
        .await
        .context("drain request")?
    {
        smart_api::Response::Ok => {
            println!(
                "draining n{}: its services are moving to other nodes",
                args.node
            );
            Ok(())
        }
        smart_api::Response::Error(e) => bail!("drain refused: {e}"),
        other => bail!("unexpected answer {other:?}"),
    }
}

fn repair(args: RepairArgs) -> anyhow::Result<()> {
    let dir = match (&args.data_dir, &args.config) {
        (Some(d), _) => d.clone(),
        (None, Some(c)) => NodeConfig::load(c)?.data_dir,
        (None, None) => bail!("give --data-dir DIR or --config FILE"),
    };
    if args.epoch > smart_supervision::engine::EPOCH_CEILING {
        bail!(
            "epoch {} is beyond the usable range (at most {})",
            args.epoch,
            smart_supervision::engine::EPOCH_CEILING
        );
    }
    let (found, now) = smart::persist::StateFile::repair(&dir, args.epoch)
        .with_context(|| format!("repairing {}", dir.display()))?;
    match found {
        Some(f) => println!(
            "{}: highest epoch {} -> {} (incarnation {})",
            dir.display(),
            f.highest_epoch,
            now.highest_epoch,
            now.incarnation
        ),
        None => println!(
            "{}: state file missing or corrupt; wrote highest epoch {}",
            dir.display(),
            now.highest_epoch
        ),
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit: a node holds a descriptor per
/// connection, and hitting EMFILE in the middle of a failover (the epoch write) must not be
/// what a few hundred idle connections can cause.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let before = lim.rlim_cur;
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!(
                    soft = before,
                    hard = lim.rlim_max,
                    "could not raise the open-file limit"
                );
                return;
            }
        }
        tracing::info!(before, now = lim.rlim_cur, "open-file limit");
    }
}

async fn distributor(args: DistributorArgs) -> anyhow::Result<()> {
    use smart_vod::distributor::{Distributor, DistributorConfig, bind};
    let mut cfg = DistributorConfig::new(
        smart_vod::http::Url::parse(&args.origin)
            .map_err(anyhow::Error::msg)
            .context("--origin")?,
    );
    cfg.window_fraction = args.window_fraction;
    let d = Distributor::new(cfg);
    let stopped = std::sync::Arc::new(tokio::sync::Notify::new());
    let control = std::env::var_os(smart_vod::control::ENV_SOCKET).map(PathBuf::from);
    if let Some(path) = &control {
        let _ = std::fs::remove_file(path);
        let l = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("control socket {}", path.display()))?;
        tokio::spawn(smart_vod::control::serve(d.clone(), l, stopped.clone()));
    }
    let l = bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    tokio::spawn(d.clone().serve(l));
    tokio::select! {
        _ = stopped.notified() => {}
        _ = shutdown_signal() => {}
    }
    if let Some(path) = &control {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Node { config } => {
            let cfg = NodeConfig::load(&config)?;
            raise_nofile_limit();
            match node::run(cfg, Faults::from_env(), shutdown_signal()).await? {
                Exit::Escalated(reason) => {
                    eprintln!("smart: node escalated: {reason}");
                    Ok(ExitCode::from(EXIT_ESCALATED))
                }
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Cmd::Status(args) => status(args).await.map(|_| ExitCode::SUCCESS),
        Cmd::Demo(args) => {
            smart::demo::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sim(args) => {
            smart_admission::sim::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Profile(args) => {
            // The profiler samples on its own schedule with blocking I/O.
            tokio::task::spawn_blocking(move || smart_instance::profiler::run(&args))
                .await
                .context("profiler task")??;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Drain(args) => drain(args).await.map(|_| ExitCode::SUCCESS),
        Cmd::Distributor(args) => distributor(args).await.map(|_| ExitCode::SUCCESS),
        Cmd::Repair(args) => repair(args).map(|_| ExitCode::SUCCESS),
        Cmd::Keys(args) => {
            let k = smart::keys::generate(&args.dir, &args.nodes)?;
            println!(
                "{}: cluster.key, {} node keys, nodes.pub",
                k.dir.display(),
                k.nodes.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(BenchCmd::Failover(args)) => {
            smart::demo::bench_failover(args).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(real_main(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("smart: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
