//! `smart bench frontend`: the latency of the front-end's `GET /watch/{video}`, measured
//! from outside on a real cluster (real node processes, a real origin, real distributors).
//!
//! Two kinds of request, one at a time so that each measures a path and not a queue:
//! - a video's **first viewer**: the front-end sends one `AdmitClient` with the
//!   distributor's spec, the Control admits and places the distributor, its agent starts
//!   the process and waits until it accepts connections, then the client is admitted and
//!   the front-end answers `302`;
//! - a **joining viewer** of a running distributor: one `AdmitClient`, answered at once.
//!
//! Both figures include the front-end's HTTP, the forward to the Control over the node
//! transport and back; the first also includes a process start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use smart_vod::http::{self, Url};
use smart_vod::origin::{Origin, Video};
use smart_vod::ts::VideoParams;

use crate::cluster::{ClusterError, ClusterSpec, LocalCluster};
use crate::demo::percentile;

/// `smart bench frontend` options.
#[derive(Debug, Clone, clap::Args)]
pub struct FrontendBenchArgs {
    /// Videos whose first viewer is timed (each starts a distributor).
    #[arg(long, default_value_t = 100)]
    pub first: usize,
    /// Joining viewers timed (spread over those videos).
    #[arg(long, default_value_t = 1000)]
    pub joins: usize,
    /// Service nodes (a front-end node is added).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Idle sockets a stranger holds to the front-end (from another address, reopened as
    /// the front-end closes them) while the joining viewers are timed again (0: not).
    #[arg(long, default_value_t = 0)]
    pub idle_sockets: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Latency of one kind of request, milliseconds, over the requests admitted (answered
/// `302`); refusals (`503`: admission said no) are counted apart, with their own median.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Requests sent.
    pub requests: usize,
    /// Answered `302`.
    pub redirected: usize,
    /// Median of the redirected.
    pub p50_ms: f64,
    /// 99th percentile of the redirected.
    pub p99_ms: f64,
    /// Mean of the redirected.
    pub mean_ms: f64,
    /// Median of the refused (none when nothing was refused).
    pub refused_p50_ms: Option<f64>,
}

/// The benchmark's result.
#[derive(Debug, Clone, Serialize)]
pub struct FrontendBench {
    /// A video's first viewer.
    pub first_viewer: Latency,
    /// A viewer joining a running distributor.
    pub joining_viewer: Latency,
    /// The same while a stranger holds `--idle-sockets` idle sockets to the front-end.
    pub joining_under_idle_sockets: Option<Latency>,
}

/// A stranger holding idle sockets, on its own thread and runtime (see [`hold_idle`]);
/// dropping it stops the stranger and closes its sockets.
struct Stranger {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Stranger {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Holds `n` idle sockets to `to` from `from`, reopening each as it closes, until the
/// returned [`Stranger`] is dropped. It runs on a thread and runtime of its own, as a
/// stranger on another machine would: its thousands of tasks do not queue ahead of the
/// timed viewers' in this process's scheduler (they still share the machine's CPUs).
fn hold_idle(to: std::net::SocketAddr, from: std::net::IpAddr, n: usize) -> Stranger {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..n {
                set.spawn(async move {
                    loop {
                        let Ok(sock) = tokio::net::TcpSocket::new_v4() else {
                            return;
                        };
                        if sock.bind(std::net::SocketAddr::new(from, 0)).is_err() {
                            return;
                        }
                        match sock.connect(to).await {
                            Ok(mut s) => {
                                use tokio::io::AsyncReadExt;
                                // Says nothing; waits for the front-end to close it.
                                let _ = s.read(&mut [0u8; 16]).await;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                });
            }
            let _ = stopped.await;
            set.abort_all();
        });
    });
    Stranger {
        stop: Some(stop),
        thread: Some(thread),
    }
}

fn latency(samples: Vec<(f64, bool)>) -> Latency {
    let mut ok: Vec<f64> = samples.iter().filter(|s| s.1).map(|s| s.0).collect();
    let mut refused: Vec<f64> = samples.iter().filter(|s| !s.1).map(|s| s.0).collect();
    ok.sort_by(|a, b| a.total_cmp(b));
    refused.sort_by(|a, b| a.total_cmp(b));
    Latency {
        requests: samples.len(),
        redirected: ok.len(),
        p50_ms: percentile(&ok, 50.0),
        p99_ms: percentile(&ok, 99.0),
        mean_ms: ok.iter().sum::<f64>() / ok.len().max(1) as f64,
        refused_p50_ms: (!refused.is_empty()).then(|| percentile(&refused, 50.0)),
    }
}

fn setup(what: &str) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        what: what.to_string(),
        source,
    }
}

/// One `GET /watch/{video}`: its latency, and whether it was redirected.
async fn watch(fe: &Url, video: &str) -> Result<(f64, bool), ClusterError> {
    let url = fe.with_path(&format!("/watch/{video}"));
    let t = Instant::now();
    let r = http::get(&url, None, Duration::from_secs(30))
        .await
        .map_err(|e| ClusterError::Node {
            node: 0,
            reason: format!("GET {video}: {e}"),
        })?;
    Ok((t.elapsed().as_secs_f64() * 1000.0, r.status == 302))
}

/// Runs the benchmark.
pub async fn run(args: FrontendBenchArgs) -> Result<FrontendBench, ClusterError> {
    let mut origin = Origin::new();
    for v in 0..args.first.max(1) {
        let video = Video::generated(VideoParams {
            bitrate_bps: 400_000,
            duration_ms: 30_000,
        })
        .map_err(|e| ClusterError::Node {
            node: 0,
            reason: format!("generating videos: {e}"),
        })?;
        origin.add(&format!("v{v}"), video);
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(setup("binding the origin"))?;
    let origin_url = format!("http://{}", l.local_addr().expect("bound"));
    tokio::spawn(Arc::new(origin).serve(l));

    let fe_node = args.nodes as u64 + 1;
    let mut spec = ClusterSpec::new(
        std::env::current_exe().map_err(setup("locating the smart executable"))?,
        args.nodes + 1,
    );
    spec.log = "warn".into();
    spec.frontends = vec![fe_node];
    spec.no_agent = vec![fe_node];
    spec.origin = origin_url;
    let cluster = LocalCluster::start(spec)?;
    let all = cluster.running();
    cluster
        .wait_agreed_control(&all, Duration::from_secs(15), |_, _| true)
        .await?;
    let fe =
        Url::parse(&cluster.frontend_url(fe_node).expect("a front-end")).map_err(|reason| {
            ClusterError::Node {
                node: fe_node,
                reason,
            }
        })?;
    // Every agent has reported once (placement knows the nodes) before timing.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut first = Vec::new();
    for v in 0..args.first {
        first.push(watch(&fe, &format!("v{v}")).await?);
    }
    let mut joins = Vec::new();
    for k in 0..args.joins {
        joins.push(watch(&fe, &format!("v{}", k % args.first.max(1))).await?);
    }
    let under_idle = if args.idle_sockets > 0 {
        let to: std::net::SocketAddr =
            format!("{}:{}", fe.host, fe.port)
                .parse()
                .map_err(|e| ClusterError::Node {
                    node: fe_node,
                    reason: format!("front-end address: {e}"),
                })?;
        let held = hold_idle(
            to,
            std::net::IpAddr::from([127, 250, 0, 9]),
            args.idle_sockets,
        );
        // Let them all connect before timing.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut joins = Vec::new();
        for k in 0..args.joins {
            joins.push(watch(&fe, &format!("v{}", k % args.first.max(1))).await?);
        }
        drop(held);
        Some(latency(joins))
    } else {
        None
    };
    let out = FrontendBench {
        first_viewer: latency(first),
        joining_viewer: latency(joins),
        joining_under_idle_sockets: under_idle,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serialisable")
        );
    } else {
        let idle_label = format!("joining, {} idle sockets", args.idle_sockets);
        let mut rows = vec![
            ("first viewer", &out.first_viewer),
            ("joining viewer", &out.joining_viewer),
        ];
        if let Some(l) = &out.joining_under_idle_sockets {
            rows.push((idle_label.as_str(), l));
        }
        for (what, l) in rows {
            println!(
                "{what:<15} {:>5} requests, {} admitted: p50 {:.1} ms, p99 {:.1} ms, mean {:.1} ms; {} refused{}",
                l.requests,
                l.redirected,
                l.p50_ms,
                l.p99_ms,
                l.mean_ms,
                l.requests - l.redirected,
                l.refused_p50_ms
                    .map(|p| format!(" (p50 {p:.1} ms)"))
                    .unwrap_or_default()
            );
        }
        if let Some(l) = &out.joining_under_idle_sockets {
            println!(
                "under idle sockets / without: p50 {:.2}x, p99 {:.2}x",
                l.p50_ms / out.joining_viewer.p50_ms,
                l.p99_ms / out.joining_viewer.p99_ms
            );
        }
    }
    Ok(out)
}
