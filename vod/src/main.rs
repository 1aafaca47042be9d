//! `vod`: the Smart-GloVE data plane on the command line.
//!
//! ## Layout
//! Subcommands: `make-video` (`--real`: H.264 + AAC with ffmpeg), `origin`, `distributor`,
//! `viewers`, `frontend`, `control`, `bench streams`, `bench density`, `bench hls`,
//! `bench handoff`. Each is a thin shell over the `smart_vod` library.

// The binary links every dependency of its package; the lint is meant for the library.
#![allow(unused_crate_dependencies)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use smart_vod::distributor::{Distributor, DistributorConfig, bind};
use smart_vod::http::Url;
use smart_vod::origin::{Origin, OriginLimits, Video};
use smart_vod::ts::{self, VideoParams};
use smart_vod::viewer::{self, LoadConfig, Shared, ViewerConfig};
use smart_vod::{bench, bench_hls, frontend, realvideo, tools, workload};
use tokio::io::AsyncWriteExt;

#[derive(Parser)]
#[command(
    name = "vod",
    about = "Smart-GloVE video distribution: origin, distributor, viewers, benchmarks"
)]
struct Cli {
    /// Log format (default: `$SMART_LOG_FORMAT`, else text); the filter is `$SMART_LOG`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<smart_vod::logging::LogFormat>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes a CBR MPEG-TS video: generated (PAT/PMT, silent MPEG audio) or, with --real,
    /// H.264 + AAC encoded by ffmpeg (test picture and tone, keyframes every 2 s).
    MakeVideo {
        /// The file to write.
        #[arg(long, required_unless_present = "dir", conflicts_with = "dir")]
        out: Option<PathBuf>,
        /// Multiplex bitrate (with --real at least 400).
        #[arg(long, default_value_t = 400)]
        bitrate_kbps: u64,
        #[arg(long, default_value_t = 60)]
        duration_s: u64,
        /// Encode real H.264 + AAC with ffmpeg.
        #[arg(long)]
        real: bool,
        /// Write a catalogue v1.ts .. vN.ts here instead (kept when unchanged).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Videos in the catalogue.
        #[arg(long, default_value_t = 4)]
        count: usize,
        /// Catalogue bitrates, used in turn (default: --bitrate-kbps).
        #[arg(long, value_delimiter = ',')]
        bitrates_kbps: Vec<u64>,
    },
    /// Serves videos over HTTP with Range and X-Bitrate/X-Duration-Ms headers.
    Origin {
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// NAME=PATH of a TS file (bitrate from its PCRs unless --bitrate-kbps).
        #[arg(long)]
        file: Vec<String>,
        /// NAME:KBPS:SECONDS of a generated video.
        #[arg(long)]
        synthetic: Vec<String>,
        #[arg(long)]
        bitrate_kbps: Option<u64>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Drop a connection whose socket accepts nothing for this long (a distributor's
        /// fetcher pauses while its window is full, so keep it long).
        #[arg(long, default_value_t = 60_000)]
        write_timeout_ms: u64,
    },
    /// A GloVE distributor (control socket from --control or $SMART_CONTROL_SOCKET).
    Distributor {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long)]
        origin: String,
        #[arg(long)]
        control: Option<PathBuf>,
        /// Start in restore mode from the instance listening at this control socket.
        #[arg(long)]
        restore_from: Option<PathBuf>,
        #[arg(long, default_value_t = 0.2)]
        window_fraction: f64,
        #[arg(long)]
        window_mb: Option<u64>,
        #[arg(long, default_value_t = 64)]
        block_kb: u64,
        #[arg(long, default_value_t = 2000)]
        prefetch_ms: u64,
        /// Pacing period = send-ahead: each viewer gets one write per period.
        #[arg(long, default_value_t = 1000)]
        tick_ms: u64,
        /// Read-ahead beyond the fastest viewer (capped at a quarter of the window).
        #[arg(long, default_value_t = 256)]
        readahead_kb: u64,
        /// Read the whole window ahead of the slowest viewer (pre-fills the cache).
        #[arg(long)]
        prefill: bool,
        /// An HLS session without a request for this long is released.
        #[arg(long, default_value_t = 20)]
        hls_session_timeout_s: u64,
        /// Media an HLS session may fetch at once ahead of real time.
        #[arg(long, default_value_t = 10)]
        hls_burst_s: u64,
        /// Past the burst, an HLS session fetches at most this many times real time.
        #[arg(long, default_value_t = 1.5)]
        hls_rate_factor: f64,
        #[command(flatten)]
        limits: LimitArgs,
        /// Drop a viewer whose socket accepts nothing for this long (it stopped reading).
        #[arg(long, default_value_t = 30_000)]
        write_timeout_ms: u64,
        /// Pacer threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        pacers: usize,
        /// Paced writes with MSG_MORE, like nginx's tcp_nopush (partial segments wait).
        #[arg(long)]
        cork: bool,
    },
    /// Load generator: N viewers with QoE summary.
    Viewers {
        #[arg(long)]
        url: String,
        #[arg(long)]
        frontend: Option<String>,
        #[arg(long, default_value_t = 10)]
        clients: usize,
        #[arg(long, default_value_t = 30)]
        duration_s: u64,
        #[arg(long, default_value_t = 2000)]
        ramp_ms: u64,
        #[arg(long, default_value_t = 1000)]
        start_buffer_ms: u64,
        /// Bitrate if the server does not say (nginx).
        #[arg(long, default_value_t = 400)]
        bitrate_kbps: u64,
        #[arg(long)]
        json: bool,
    },
    /// Redirects every request (302) to the same path at --target.
    Frontend {
        #[arg(long, default_value = "127.0.0.1:8088")]
        listen: SocketAddr,
        #[arg(long)]
        target: String,
    },
    /// Sends one control request (a JSON line, e.g. '{"op":"usage"}') and prints the reply.
    Control {
        /// The instance's control socket.
        #[arg(long)]
        socket: PathBuf,
        request: String,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
}

/// Connection cap and head timeout, shared by the servers.
#[derive(clap::Args, Clone, Copy)]
struct LimitArgs {
    /// Most concurrent connections; more get 503 (0: open-file limit minus 256).
    #[arg(long, default_value_t = 0)]
    max_connections: usize,
    /// A client must send its request head within this time (else 408, closed).
    #[arg(long, default_value_t = 10_000)]
    head_timeout_ms: u64,
}

impl LimitArgs {
    fn max_connections(&self) -> usize {
        match self.max_connections {
            0 => smart_vod::http::default_max_connections(),
            n => n,
        }
    }
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Concurrent paced viewers one distributor sustains (and nginx with limit_rate).
    Streams {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 20)]
        duration_s: u64,
        /// Ramp; default 1 ms per viewer, at least 2 s.
        #[arg(long)]
        ramp_ms: Option<u64>,
        #[arg(long, default_value_t = 400)]
        bitrate_kbps: u64,
        #[arg(long, default_value_t = 2000)]
        prefetch_ms: u64,
        /// The distributor's pacing period = send-ahead (nginx's limit_rate allows 1 s).
        #[arg(long, default_value_t = 1000)]
        tick_ms: u64,
        #[arg(long)]
        no_nginx: bool,
        /// Skip the corked pair (our --cork against nginx with tcp_nopush on).
        #[arg(long)]
        no_cork: bool,
        #[arg(long)]
        json: bool,
    },
    /// The thesis's density experiment (§5.5): many distributors with full caches on one
    /// node, observed while more are live-migrated beside them.
    Density {
        #[arg(long, default_value_t = 24)]
        distributors: usize,
        #[arg(long, default_value_t = 2)]
        migrate: usize,
        #[arg(long, default_value_t = 72)]
        cache_mb: u64,
        #[arg(long, default_value_t = 20)]
        viewers: usize,
        #[arg(long, default_value_t = 400)]
        bitrate_kbps: u64,
        /// Seconds of service before the migrations (after the viewers' 2 s ramp).
        #[arg(long, default_value_t = 10)]
        before_s: u64,
        /// Seconds of service after the migrations start.
        #[arg(long, default_value_t = 20)]
        after_s: u64,
        #[arg(long)]
        json: bool,
    },
    /// CPU per HLS viewer against per progressive viewer, same distributor, one run.
    Hls {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Measured steady state of each phase.
        #[arg(long, default_value_t = 20)]
        duration_s: u64,
        /// Ramp of each phase; default 1 ms per viewer, at least 2 s.
        #[arg(long)]
        ramp_ms: Option<u64>,
        #[arg(long, default_value_t = 400)]
        bitrate_kbps: u64,
        /// Media each HLS viewer keeps buffered.
        #[arg(long, default_value_t = 10)]
        buffer_s: u64,
        #[arg(long)]
        json: bool,
    },
    /// Pre-copy migration of a distributor with a full cache and viewers.
    Handoff {
        #[arg(long, default_value_t = 72)]
        cache_mb: u64,
        #[arg(long, default_value_t = 100)]
        clients: usize,
        #[arg(long, default_value_t = 400)]
        bitrate_kbps: u64,
        #[arg(long, default_value_t = 3000)]
        prefetch_ms: u64,
        #[arg(long)]
        json: bool,
    },
}

/// Raises the open-file limit: 20,000 viewers need 20,000 sockets in the server and as many
/// in the load generator. As root the hard limit itself is raised (to 1M, or the kernel's
/// `nr_open`); otherwise the soft limit goes up to the hard one. Children inherit it.
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on local structs.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return;
        }
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
            .unwrap_or(1 << 20);
        let want = libc::rlimit {
            rlim_cur: nr_open.max(r.rlim_max),
            rlim_max: nr_open.max(r.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn print(v: &serde_json::Value, json: bool) {
    if json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    smart_vod::logging::init(cli.log_format, "warn");
    raise_nofile();
    match cli.cmd {
        Cmd::MakeVideo {
            out,
            bitrate_kbps,
            duration_s,
            real,
            dir,
            count,
            bitrates_kbps,
        } => {
            let duration = Duration::from_secs(duration_s);
            let kbps = if bitrates_kbps.is_empty() {
                vec![bitrate_kbps]
            } else {
                bitrates_kbps
            };
            let list: Vec<(PathBuf, u64)> = match (&out, &dir) {
                (Some(o), _) => vec![(o.clone(), bitrate_kbps)],
                (None, Some(d)) => realvideo::catalogue(count, duration, &kbps)
                    .into_iter()
                    .map(|(name, v)| (d.join(name), v.mux_kbps))
                    .collect(),
                (None, None) => bail!("give --out or --dir"),
            };
            if real {
                let ffmpeg = tools::which("ffmpeg")
                    .context("--real needs ffmpeg (scripts/setup.sh installs it)")?;
                let made = match (&out, &dir) {
                    (Some(o), _) => {
                        vec![realvideo::RealVideo::new(bitrate_kbps, duration).make(&ffmpeg, o)?]
                    }
                    (_, Some(d)) => realvideo::make_catalogue(
                        &ffmpeg,
                        d,
                        &realvideo::catalogue(count, duration, &kbps),
                    )?,
                    _ => unreachable!("checked above"),
                };
                for m in made {
                    println!("{}", serde_json::to_string(&m)?);
                }
            } else {
                if let Some(d) = &dir {
                    std::fs::create_dir_all(d)?;
                }
                for (path, k) in list {
                    let data = ts::generate(VideoParams {
                        bitrate_bps: k * 1000,
                        duration_ms: duration_s * 1000,
                    })?;
                    std::fs::write(&path, &data)
                        .with_context(|| format!("writing {}", path.display()))?;
                    println!("{}: {} bytes", path.display(), data.len());
                }
            }
        }
        Cmd::Origin {
            listen,
            file,
            synthetic,
            bitrate_kbps,
            limits,
            write_timeout_ms,
        } => {
            let mut o = Origin::with_limits(OriginLimits {
                max_connections: limits.max_connections(),
                head_timeout: Duration::from_millis(limits.head_timeout_ms),
                write_timeout: Duration::from_millis(write_timeout_ms.max(1)),
            });
            for f in &file {
                let (name, path) = f
                    .split_once('=')
                    .with_context(|| format!("--file {f:?}: expected NAME=PATH"))?;
                let v = Video::from_file(path.as_ref(), bitrate_kbps.map(|k| k * 1000))
                    .with_context(|| format!("--file {f}"))?;
                o.add(name, v);
            }
            for s in &synthetic {
                let p: Vec<&str> = s.split(':').collect();
                let [name, kbps, secs] = p[..] else {
                    bail!("--synthetic {s:?}: expected NAME:KBPS:SECONDS")
                };
                let params = VideoParams {
                    bitrate_bps: kbps.parse::<u64>()? * 1000,
                    duration_ms: secs.parse::<u64>()? * 1000,
                };
                o.add(name, Video::generated(params)?);
            }
            let l = bind(listen).with_context(|| format!("binding {listen}"))?;
            println!("listening on {}", l.local_addr()?);
            Arc::new(o).serve(l).await;
        }
        Cmd::Distributor {
            listen,
            origin,
            control,
            restore_from,
            window_fraction,
            window_mb,
            block_kb,
            prefetch_ms,
            tick_ms,
            readahead_kb,
            prefill,
            hls_session_timeout_s,
            hls_burst_s,
            hls_rate_factor,
            limits,
            write_timeout_ms,
            pacers,
            cork,
        } => {
            let mut cfg = DistributorConfig::new(
                Url::parse(&origin)
                    .map_err(anyhow::Error::msg)
                    .context("--origin")?,
            );
            cfg.window_fraction = window_fraction;
            cfg.window_bytes = window_mb.map(|m| m * 1_000_000);
            cfg.block_size = block_kb.max(1) * 1024;
            cfg.prefetch_ms = prefetch_ms;
            cfg.tick = Duration::from_millis(tick_ms.max(1));
            cfg.readahead = (!prefill).then_some(readahead_kb * 1024);
            cfg.hls.session_timeout = Duration::from_secs(hls_session_timeout_s.max(1));
            cfg.hls.burst = Duration::from_secs(hls_burst_s);
            cfg.hls.rate_factor = hls_rate_factor.max(0.1);
            cfg.max_connections = limits.max_connections();
            cfg.head_timeout = Duration::from_millis(limits.head_timeout_ms);
            cfg.write_timeout = Duration::from_millis(write_timeout_ms.max(1));
            cfg.pacers = pacers;
            cfg.cork = cork;
            let d = Distributor::try_new(cfg).context("starting the distributor")?;
            if let Some(src) = &restore_from {
                let r = workload::restore(&d, src, None)
                    .await
                    .with_context(|| format!("restore from {}", src.display()))?;
                eprintln!("restored {} bytes in {:.1} ms", r.bytes, r.ms);
            }
            let stopped = Arc::new(tokio::sync::Notify::new());
            let control =
                control.or_else(|| std::env::var_os(workload::ENV_SOCKET).map(PathBuf::from));
            if let Some(path) = &control {
                let _ = std::fs::remove_file(path);
                let l = tokio::net::UnixListener::bind(path)
                    .with_context(|| format!("control socket {}", path.display()))?;
                tokio::spawn(workload::serve(d.clone(), l, stopped.clone()));
            }
            let l = bind(listen).with_context(|| format!("binding {listen}"))?;
            let mut out = tokio::io::stdout();
            out.write_all(format!("listening on {}\n", l.local_addr()?).as_bytes())
                .await?;
            out.flush().await?;
            tokio::spawn(d.clone().serve(l));
            tokio::select! {
                _ = stopped.notified() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            if let Some(path) = &control {
                let _ = std::fs::remove_file(path);
            }
        }
        Cmd::Viewers {
            url,
            frontend,
            clients,
            duration_s,
            ramp_ms,
            start_buffer_ms,
            bitrate_kbps,
            json,
        } => {
            let cfg = LoadConfig {
                viewer: ViewerConfig {
                    url: Url::parse(&url).map_err(anyhow::Error::msg)?,
                    frontend: frontend
                        .as_deref()
                        .map(Url::parse)
                        .transpose()
                        .map_err(anyhow::Error::msg)?,
                    bitrate_bps: bitrate_kbps * 1000,
                    prefetch_bytes: 0,
                    start_buffer: Duration::from_millis(start_buffer_ms),
                    start_offset: 0,
                },
                clients,
                ramp: Duration::from_millis(ramp_ms),
                duration: Duration::from_secs(duration_s),
            };
            let shared = Arc::new(Shared::default());
            let reports = viewer::run_load(&cfg, shared.clone()).await;
            print(
                &serde_json::to_value(viewer::summarize(&reports, &shared))?,
                json,
            );
        }
        Cmd::Frontend { listen, target } => {
            let f = frontend::Frontend::new(Url::parse(&target).map_err(anyhow::Error::msg)?);
            let l = bind(listen)?;
            println!("listening on {}", l.local_addr()?);
            f.serve(l).await;
        }
        Cmd::Control { socket, request } => {
            let req = smart_proto::workload::parse_request(&request).map_err(anyhow::Error::msg)?;
            if req == smart_proto::workload::WorkloadRequest::Checkpoint {
                bail!("checkpoint streams binary data; use smart_proto::workload::WorkloadClient");
            }
            let mut c = smart_proto::workload::WorkloadClient::connect(
                &socket,
                std::time::Duration::from_secs(60),
            )
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
            println!("{}", c.call::<serde_json::Value>(&req).await?);
        }
        Cmd::Bench { which } => {
            let exe = std::env::current_exe()?;
            match which {
                BenchCmd::Streams {
                    clients,
                    duration_s,
                    ramp_ms,
                    bitrate_kbps,
                    prefetch_ms,
                    tick_ms,
                    no_nginx,
                    no_cork,
                    json,
                } => {
                    let ramp = Duration::from_millis(ramp_ms.unwrap_or((clients as u64).max(2000)));
                    let args = bench::StreamsArgs {
                        clients,
                        bitrate_bps: bitrate_kbps * 1000,
                        duration: Duration::from_secs(duration_s),
                        ramp,
                        prefetch_ms,
                        tick_ms,
                        nginx: !no_nginx,
                        cork: !no_cork,
                        exe,
                    };
                    print(&bench::streams(args).await?, json);
                }
                BenchCmd::Hls {
                    clients,
                    duration_s,
                    ramp_ms,
                    bitrate_kbps,
                    buffer_s,
                    json,
                } => {
                    let args = bench_hls::HlsBenchArgs {
                        clients,
                        bitrate_bps: bitrate_kbps * 1000,
                        duration: Duration::from_secs(duration_s),
                        ramp: Duration::from_millis(ramp_ms.unwrap_or((clients as u64).max(2000))),
                        buffer: Duration::from_secs(buffer_s),
                        exe,
                    };
                    print(&bench_hls::hls(args).await?, json);
                }
                BenchCmd::Density {
                    distributors,
                    migrate,
                    cache_mb,
                    viewers,
                    bitrate_kbps,
                    before_s,
                    after_s,
                    json,
                } => {
                    let args = bench::DensityArgs {
                        distributors,
                        migrate,
                        cache_mb,
                        viewers,
                        bitrate_bps: bitrate_kbps * 1000,
                        before: Duration::from_secs(before_s),
                        after: Duration::from_secs(after_s),
                        exe,
                    };
                    print(&bench::density(args).await?, json);
                }
                BenchCmd::Handoff {
                    cache_mb,
                    clients,
                    bitrate_kbps,
                    prefetch_ms,
                    json,
                } => {
                    let args = bench::HandoffArgs {
                        cache_mb,
                        clients,
                        bitrate_bps: bitrate_kbps * 1000,
                        prefetch_ms,
                        exe,
                    };
                    print(&bench::handoff(args).await?, json);
                }
            }
        }
    }
    Ok(())
}
