//! `smart`: the SMART peer binary and its admin commands. See the README and
//! docs/operations.md.

// The binary links every dependency of its package; the lint is meant for the library.
#![allow(unused_crate_dependencies)]

mod ops;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::ops::{OpsCmd, client::OpsError};
use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand};
use smart_config::NodeConfig;
use smart_supervision::{self as node, Faults, supervisor::Exit};
use smart_vod::logging::LogFormat;

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
    /// Log format (default: `$SMART_LOG_FORMAT`, else text); the filter is `$SMART_LOG`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
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
    #[command(flatten)]
    Ops(OpsCmd),
    /// API tokens for the HTTP API.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Node configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// This build's versions (crate, message API, transport, heartbeats); with an address,
    /// the node's too.
    Version(ops::Conn),
    /// Shell completions for `smart`, on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// The `smart(1)` man page (roff), on stdout.
    Man,
    /// Run a local cluster on loopback and show a Control failover.
    Demo(smart_bench::demo::DemoArgs),
    /// Simulate admission control and placement under a VoD workload (deterministic).
    Sim(smart_admission::sim::SimArgs),
    /// Agent99: profile a service's resource usage and write its profile.
    Profile(smart_agent99::ProfileArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// A GloVE video distributor (what Agent86 runs for a video; see `vod distributor`).
    Distributor(DistributorArgs),
    /// Make a cluster's keys in a directory: cluster.key, one key per node (n1.key, ...),
    /// nodes.pub.
    /// Existing keys are kept.
    Keys(KeysArgs),
    /// Repair a stopped node's data dir: set its highest epoch (e.g. after a corrupt or
    /// forged value made it unusable). Use the cluster's highest epoch from `smart status`.
    Repair(RepairArgs),
    /// Certificates for the HTTP API's TLS (`[http_tls]`): a cluster CA, and node
    /// certificates signed by it.
    #[command(subcommand)]
    Tls(TlsCmd),
}

#[derive(clap::Subcommand)]
enum TlsCmd {
    /// Make the cluster's CA in a directory (api-ca.crt, api-ca.key); an existing one is
    /// kept.
    Ca {
        /// Where to write it.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a node's certificate (NAME-api.crt, NAME-api.key) signed by the CA in the
    /// directory, for the names and addresses the node's API is reached by.
    Cert {
        /// The directory holding the CA; the certificate is written there too.
        #[arg(long)]
        dir: PathBuf,
        /// The certificate's file name prefix, e.g. n1.
        #[arg(long)]
        name: String,
        /// A DNS name or IP address of the node's `http_listen` (repeat or comma-separate).
        #[arg(long = "host", value_delimiter = ',', required = true)]
        hosts: Vec<String>,
    },
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
    /// Store an epoch above 2^32 all the same (a cluster that elects a Control every
    /// second needs 136 years to get there: such a value is a typo or a forgery).
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Make a random token, append its digest to a tokens file and print the token once.
    New {
        /// What it may do.
        #[arg(long, value_enum, default_value = "read")]
        scope: TokenScope,
        /// Who holds it (for the logs).
        #[arg(long, default_value = "operator")]
        name: String,
        /// The tokens file (a node's `tokens_file`); created if missing.
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TokenScope {
    /// Every GET route.
    Read,
    /// Every route.
    Admin,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Check a node config as `smart node` would: keys, values, the cluster key and the
    /// tokens file.
    Check {
        /// The file.
        file: PathBuf,
    },
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
    /// Cache window per video, MB (overrides `--window-fraction`).
    #[arg(long)]
    window_mb: Option<u64>,
    /// Read the whole window ahead of the slowest viewer (pre-fills the cache: benchmarks
    /// that migrate a full cache).
    #[arg(long)]
    prefill: bool,
    /// The one video to serve (e.g. `v1.ts`); any other request is `404`. The front-end
    /// names its video in `SMART_VIDEO` when it admits a distributor.
    #[arg(long, env = "SMART_VIDEO")]
    video: Option<String>,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Control failover time (kill -9 until every survivor reports the new Control).
    Failover(smart_bench::demo::FailoverBenchArgs),
    /// The front-end's `GET /watch` latency, for a video's first viewer and a joining one.
    Frontend(smart_bench::bench_frontend::FrontendBenchArgs),
    /// HTTP API latency (`/v1/status`, `/v1/services`) under a steady load, and the
    /// dashboard's update delay after a node dies.
    Api(smart_bench::bench_api::ApiBenchArgs),
    /// The desired-state log: admission latency with its commit, and a whole-cluster
    /// restart until every admitted service is back.
    Desired(smart_bench::bench_desired::DesiredBenchArgs),
    /// Live migration across network-namespace hosts (root): total time and viewers'
    /// pauses against cache size and against viewers (the thesis's Figures 5.4 and 5.9).
    Migration(smart_bench::bench_migration::MigrationBenchArgs),
}

fn config_check(file: &std::path::Path) -> anyhow::Result<()> {
    let cfg = NodeConfig::load(file)?;
    smart_proto::ClusterKey::load(&cfg.cluster_key_file)
        .with_context(|| format!("cluster_key_file of {}", file.display()))?;
    let key = smart_transport::noise::NodeKey::load(&cfg.node_key_file)
        .with_context(|| format!("node_key_file of {}", file.display()))?;
    let book = smart_transport::noise::KeyBook::load(&cfg.node_public_keys_file)
        .with_context(|| format!("node_public_keys_file of {}", file.display()))?;
    if book.get(cfg.id()) != Some(&key.public()) {
        bail!(
            "{}: {} does not list this node's key (node_key_file {}): run `smart keys` again",
            file.display(),
            cfg.node_public_keys_file.display(),
            cfg.node_key_file.display()
        );
    }
    let tokens = match &cfg.tokens_file {
        Some(t) => {
            let f = smart_supervision::tokens::TokenFile::load(t)?;
            format!("{} API tokens", f.token.len())
        }
        None => "no tokens_file: /v1 refuses every request".into(),
    };
    println!(
        "{}: ok: node n{}, listen {}, advertise {}, data plane {}, http {}, roles {:?}, {tokens}",
        file.display(),
        cfg.node_id,
        cfg.listen,
        cfg.advertise_addr(),
        cfg.data_plane_ip(),
        cfg.http_url().unwrap_or_else(|| "none".into()),
        cfg.roles
    );
    // Every request timeout, as derived from [timing] (config/example.toml explains how).
    let d = cfg.timing.derived();
    println!(
        "  timing: request budget {:?} (each viewer/API request's deadline), exchange {:?}, \
         start/stop {:?}, migrate out {:?}, migrate in {:?}",
        d.request_budget, d.exchange, d.start, d.migrate_out, d.migrate_in
    );
    Ok(())
}

/// The highest epoch `smart repair` stores without `--force`.
const REPAIR_EPOCH_SANE: u64 = 1 << 32;

fn repair(args: RepairArgs) -> anyhow::Result<()> {
    let dir = match (&args.data_dir, &args.config) {
        (Some(d), _) => d.clone(),
        (None, Some(c)) => NodeConfig::load(c)?.data_dir,
        (None, None) => bail!("give --data-dir DIR or --config FILE"),
    };
    if args.epoch > smart_membership::engine::EPOCH_CEILING {
        bail!(
            "epoch {} is beyond the usable range (at most {})",
            args.epoch,
            smart_membership::engine::EPOCH_CEILING
        );
    }
    if args.epoch > REPAIR_EPOCH_SANE && !args.force {
        bail!(
            "epoch {} is above {REPAIR_EPOCH_SANE}: no real cluster gets there; check `smart status` \
             on a healthy node, or pass --force",
            args.epoch
        );
    }
    let (found, now) = smart_membership::persist::StateFile::repair(&dir, args.epoch)
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
    cfg.window_bytes = args.window_mb.map(|m| m * 1_000_000);
    if args.prefill {
        cfg.readahead = None;
    }
    cfg.only_video = args
        .video
        .map(|v| format!("/{}", v.trim_start_matches('/')));
    let d = Distributor::new(cfg);
    let stopped = std::sync::Arc::new(tokio::sync::Notify::new());
    let control = std::env::var_os(smart_vod::workload::ENV_SOCKET).map(PathBuf::from);
    if let Some(path) = &control {
        let _ = std::fs::remove_file(path);
        let l = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("control socket {}", path.display()))?;
        tokio::spawn(smart_vod::workload::serve(d.clone(), l, stopped.clone()));
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
            // A broken certificate stops the node at once, with the file named (as a bad
            // key does), instead of an API that never comes up.
            if let Some(t) = &cfg.http_tls {
                smart_node::tls::acceptor(&t.cert_file, &t.key_file)
                    .map_err(|e| anyhow::anyhow!("http_tls: {e}"))?;
            }
            raise_nofile_limit();
            match node::run(cfg, Faults::from_env(), shutdown_signal()).await? {
                Exit::Escalated(reason) => {
                    eprintln!("smart: node escalated: {reason}");
                    Ok(ExitCode::from(EXIT_ESCALATED))
                }
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Cmd::Ops(cmd) => ops::run(cmd)
            .await
            .map(|_| ExitCode::SUCCESS)
            .map_err(Into::into),
        Cmd::Version(conn) => ops::version(&conn)
            .await
            .map(|_| ExitCode::SUCCESS)
            .map_err(Into::into),
        Cmd::Tokens(TokensCmd::New { scope, name, file }) => {
            let scope = match scope {
                TokenScope::Read => smart_supervision::tokens::Scope::Read,
                TokenScope::Admin => smart_supervision::tokens::Scope::Admin,
            };
            let token = smart_supervision::tokens::TokenFile::append_new(&file, &name, scope)?;
            eprintln!(
                "{scope} token `{name}` added to {} (only its digest is kept there):",
                file.display()
            );
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Config(ConfigCmd::Check { file }) => config_check(&file).map(|_| ExitCode::SUCCESS),
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "smart", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo(args) => {
            smart_bench::demo::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sim(args) => {
            smart_admission::sim::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Profile(args) => {
            // The profiler samples on its own schedule with blocking I/O.
            tokio::task::spawn_blocking(move || smart_agent99::run(&args))
                .await
                .context("profiler task")??;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Distributor(args) => distributor(args).await.map(|_| ExitCode::SUCCESS),
        Cmd::Bench(BenchCmd::Api(args)) => {
            smart_bench::bench_api::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(BenchCmd::Desired(args)) => {
            smart_bench::bench_desired::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(BenchCmd::Frontend(args)) => {
            smart_bench::bench_frontend::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Repair(args) => repair(args).map(|_| ExitCode::SUCCESS),
        Cmd::Tls(TlsCmd::Ca { dir }) => {
            let ca = smart_node::tls::make_ca(&dir)?;
            println!("{}", ca.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Tls(TlsCmd::Cert { dir, name, hosts }) => {
            let (cert, key) = smart_node::tls::issue(&dir, &name, &hosts)?;
            println!("{}\n{}", cert.display(), key.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Keys(args) => {
            let k = smart_transport::keys::generate(&args.dir, &args.nodes)?;
            println!(
                "{}: cluster.key, {} node keys, nodes.pub",
                k.dir.display(),
                k.nodes.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(BenchCmd::Failover(args)) => {
            smart_bench::demo::bench_failover(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(BenchCmd::Migration(args)) => {
            smart_bench::bench_migration::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The one crypto provider of every HTTPS client and server in this process.
    smart_node::tls::install_provider();
    smart_vod::logging::init(cli.log_format, "info");
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(real_main(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("smart: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            // Admin commands exit with a code that says what failed (docs/operations.md, "Exit
            // codes").
            match e.downcast_ref::<OpsError>() {
                Some(o) => ExitCode::from(o.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
    }
}
