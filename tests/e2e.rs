//! End to end with real processes (docs/DESIGN.md §7 level 3): `smart node` processes on loopback,
//! an origin with generated MPEG-TS videos, the front-end's `GET /watch/{video}`, and viewers
//! that check every byte (TS continuity, Content-Range) and resume by `Range`.
//!
//! The last node is the front-end and runs no services (it has no agent role), so killing a
//! service node never takes the front-end with it. Each test starts its own cluster; every wait is
//! bounded. The nextest config runs this binary serially (group `e2e`).

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::sync::Arc;
use std::time::Duration;

use smart_api::{Request, Response, ServiceStatus};
use smart_bench::cluster::{ClusterSpec, LocalCluster};
use smart_testkit::cluster;
use smart_testkit::p99;
use smart_vod::http::Url;
use smart_vod::origin::{Origin, Video};
use smart_vod::tools::require_bin;
use smart_vod::ts::VideoParams;
use smart_vod::viewer::{Shared, ViewerConfig, ViewerReport, run_viewer};
use tokio::sync::watch;

const KBPS: u64 = 400;

/// An origin on loopback with `videos` generated videos of `secs` seconds.
async fn origin(videos: usize, secs: u64) -> String {
    let mut o = Origin::new();
    for v in 0..videos {
        let video = Video::generated(VideoParams {
            bitrate_bps: KBPS * 1000,
            duration_ms: secs * 1000,
        })
        .unwrap();
        o.add(&format!("v{v}"), video);
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(Arc::new(o).serve(l));
    format!("http://{addr}")
}

fn spec(nodes: usize, origin: &str) -> ClusterSpec {
    cluster::frontend_spec(env!("CARGO_BIN_EXE_smart"), nodes, origin, KBPS * 1000)
}

struct Viewers {
    stop: watch::Sender<bool>,
    handles: Vec<(String, tokio::task::JoinHandle<ViewerReport>)>,
}

/// `n` viewers spread over `videos`, joining over `ramp`.
fn viewers(fe: &str, n: usize, videos: usize, ramp: Duration) -> Viewers {
    let (stop, rx) = watch::channel(false);
    let shared = Arc::new(Shared::default());
    let mut handles = Vec::new();
    for i in 0..n {
        let video = format!("v{}", i % videos);
        let url = Url::parse(&format!("{fe}/watch/{video}")).unwrap();
        let cfg = ViewerConfig {
            url: url.clone(),
            frontend: Some(url),
            bitrate_bps: KBPS * 1000,
            prefetch_bytes: 0,
            start_buffer: Duration::from_millis(500),
            start_offset: 0,
        };
        let (shared, rx) = (shared.clone(), rx.clone());
        let delay = ramp * i as u32 / n.max(1) as u32;
        handles.push((
            video,
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                run_viewer(&cfg, &shared, rx).await
            }),
        ));
    }
    Viewers { stop, handles }
}

impl Viewers {
    async fn finish(self) -> Vec<(String, ViewerReport)> {
        let _ = self.stop.send(true);
        let mut out = Vec::new();
        for (v, h) in self.handles {
            out.push((v, h.await.unwrap()));
        }
        out
    }
}

fn fe_node(c: &LocalCluster) -> u64 {
    c.nodes.len() as u64
}

async fn services(c: &LocalCluster, via: u64) -> Vec<ServiceStatus> {
    let cl = c
        .client(via)
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    match cl.request(Request::Services).await {
        Ok(Response::Services(s)) => s,
        other => panic!("services: {other:?}"),
    }
}

/// Waits until `videos` distributors run.
async fn wait_services(c: &LocalCluster, n: usize) -> Vec<ServiceStatus> {
    for _ in 0..200 {
        let s = services(c, fe_node(c)).await;
        if s.len() >= n {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "services never came up: {:?}\n{}",
        services(c, fe_node(c)).await,
        c.log_tail(1, 40)
    );
}

/// The set-up most tests share: an origin with `videos` videos of `secs` seconds, a cluster
/// of `nodes` nodes pointed at it, its agreed Control `(node, epoch)` and front-end URL.
async fn case(videos: usize, secs: u64, nodes: usize) -> (LocalCluster, (u64, u64), String) {
    case_with(videos, secs, nodes, "").await
}

/// [`case`] with `frontend_toml` added to the front-end's `[frontend]` table.
async fn case_with(
    videos: usize,
    secs: u64,
    nodes: usize,
    frontend_toml: &str,
) -> (LocalCluster, (u64, u64), String) {
    let origin = origin(videos, secs).await;
    let mut spec = spec(nodes, &origin);
    spec.frontend_toml = frontend_toml.to_string();
    let c = LocalCluster::start(spec).unwrap();
    let all = c.running();
    let control = c
        .wait_agreed_control(&all, Duration::from_secs(15), |_, _| true)
        .await
        .unwrap();
    let fe = c.frontend_url(fe_node(&c)).unwrap();
    (c, control, fe)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_service_node_viewers_resume_elsewhere_at_the_right_byte() {
    // Redirected viewers: each one finds the new distributor itself (through the front-end,
    // by `Range`); relayed ones (the default) are the drain test's and the players suite's.
    let (mut c, (control, _), fe) = case_with(3, 120, 4, "progressive = \"redirect\"\n").await;
    let v = viewers(&fe, 75, 3, Duration::from_secs(2));
    let placed = wait_services(&c, 3).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // A service node that is neither the front-end nor the Control.
    let victim = placed
        .iter()
        .map(|s| s.placement.node.0)
        .find(|&n| n != fe_node(&c) && n != control)
        .expect("a service on a node other than the control");
    let moved: Vec<String> = placed
        .iter()
        .filter(|s| s.placement.node.0 == victim)
        .map(|s| s.placement.service.clone())
        .collect();
    c.kill(victim).unwrap();
    // Its services come back on other nodes.
    let mut back = false;
    for _ in 0..100 {
        let s = services(&c, fe_node(&c)).await;
        if moved.iter().all(|m| {
            s.iter()
                .any(|x| &x.placement.service == m && x.placement.node.0 != victim)
        }) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        back,
        "services of n{victim} not re-admitted\n{}",
        c.log_tail(control, 40)
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let reports = v.finish().await;
    let mut gaps = Vec::new();
    for (video, r) in &reports {
        assert_eq!(r.integrity_errors, 0, "{video}: corrupt stream {r:?}");
        assert!(r.http_error.is_none(), "{video}: {r:?}");
        assert!(r.startup_ms.is_some(), "{video}: never played {r:?}");
        if moved.contains(&format!("video-{video}")) {
            assert!(r.reconnects >= 1, "{video}: never reconnected {r:?}");
            gaps.extend(r.gaps_ms.iter().copied());
            for (i, b) in r.buffered_at_disconnect_ms.iter().enumerate() {
                if *b >= 3000.0 {
                    assert_eq!(
                        r.stalls, 0,
                        "{video}: stalled with {b} ms buffered (reconnect {i})"
                    );
                }
            }
        }
    }
    let p = p99(gaps);
    println!(
        "node failure: {} services moved, resume gap p99 {p:.0} ms",
        moved.len()
    );
    assert!(p < 3_000.0, "resume p99 {p} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_control_during_admissions_loses_nothing_and_runs_nothing_twice() {
    let (mut c, (control, epoch), fe) = case(6, 120, 4).await;
    let all = c.running();
    // A burst of first viewers of 6 videos (6 service admissions) ...
    let v = viewers(&fe, 12, 6, Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... during which the Control dies (if the Control is the front-end node, which must
    // stay, a service node dies instead and the Control stays).
    let fe_id = fe_node(&c);
    let killed = if control == fe_id { 1 } else { control };
    c.kill(killed).unwrap();
    let survivors: Vec<u64> = all.iter().copied().filter(|&n| n != killed).collect();
    c.wait_agreed_control(&survivors, Duration::from_secs(10), |n, e| {
        n != killed && (killed != control || e > epoch)
    })
    .await
    .unwrap();
    // Every video ends up with exactly one distributor, and every viewer plays.
    let mut ok = false;
    let mut last = Vec::new();
    for _ in 0..200 {
        last = services(&c, fe_node(&c)).await;
        if last.len() == 6 && last.iter().all(|s| s.placement.node.0 != killed) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "not all 6 services placed: {last:?}");
    // Two more report rounds of the new Control: every start it or its predecessor issued
    // has been answered and reported, so a duplicate would be running by now.
    cluster::wait_registry_copies(&c, &survivors, 2).await;
    // Nothing runs twice: each service has one instance across the agents' reports.
    let mut instances = std::collections::BTreeMap::<String, usize>::new();
    for n in &survivors {
        // Status has no instance list: count the agents' pid files instead.
        let dir = c.dir().join(format!("n{n}")).join("instances");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(inst) = name.strip_suffix(".pid") {
                let svc = inst.rsplit_once('.').map(|(s, _)| s.to_string()).unwrap();
                *instances.entry(svc).or_default() += 1;
            }
        }
    }
    assert_eq!(instances.len(), 6, "{instances:?}");
    assert!(
        instances.values().all(|&n| n == 1),
        "duplicates: {instances:?}"
    );
    let reports = v.finish().await;
    for (video, r) in &reports {
        assert_eq!(r.integrity_errors, 0, "{video}: {r:?}");
        assert!(r.startup_ms.is_some(), "{video}: never played {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_every_viewer_with_a_short_gap() {
    // The default configuration: the front-end relays, so the move is the front-end's to
    // hide (each relayed viewer's upstream is handed off and resumed by `Range`).
    let (c, _, fe) = case(2, 120, 3).await;
    // The front-end's health (what a failover daemon checks): it serves and knows a Control.
    let h = reqwest::get(format!("{fe}/healthz")).await.unwrap();
    assert_eq!(h.status(), 200);
    assert!(h.text().await.unwrap().starts_with("ok: control "));
    let v = viewers(&fe, 100, 2, Duration::from_secs(2));
    let placed = wait_services(&c, 2).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let node = placed[0].placement.node;
    let on_node: Vec<String> = placed
        .iter()
        .filter(|s| s.placement.node == node)
        .map(|s| s.placement.service.clone())
        .collect();
    let resumes_before = cluster::node_counter(&c, fe_node(&c), "frontend_relay_resumes").await;
    cluster::succeeded(
        "smart drain",
        std::process::Command::new(env!("CARGO_BIN_EXE_smart"))
            .args(["drain", &node.to_string(), "--config"])
            .arg(c.dir().join(format!("n{}.toml", fe_node(&c))))
            .env("SMART_TOKEN", c.admin_token())
            .output()
            .unwrap(),
    );
    let mut moved = false;
    for _ in 0..200 {
        let s = services(&c, fe_node(&c)).await;
        if s.iter().all(|x| x.placement.node != node) {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(moved, "n{node} not drained");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reports = v.finish().await;
    let mut moved_viewers = 0u64;
    for (video, r) in &reports {
        assert_eq!(r.integrity_errors, 0, "{video}: {r:?}");
        assert_eq!(r.stalls, 0, "{video}: {r:?}");
        assert!(r.http_error.is_none(), "{video}: {r:?}");
        // One unbroken response each: the front-end resumed it, the viewer saw no move.
        assert_eq!(r.reconnects, 0, "{video}: {r:?}");
        if on_node.contains(&format!("video-{video}")) {
            moved_viewers += 1;
        }
    }
    let st = c.status(fe_node(&c)).await.unwrap();
    let resumes = cluster::counter(&st, "frontend_relay_resumes") - resumes_before;
    assert!(
        resumes >= moved_viewers,
        "{resumes} relay resumes for {moved_viewers} viewers of the drained node"
    );
    let get = |k: &str| cluster::counter(&st, k);
    let p99 = smart_frontend::resume_quantile(&get, 0.99).unwrap();
    println!(
        "drain: {} services, {moved_viewers} relayed viewers, {resumes} resumes, pause p99 <= {p99} ms (bucket), max {} ms",
        on_node.len(),
        get("frontend_relay_resume_ms_max")
    );
    // A handed-off upstream is resumed at once, not after the relay's silence timeout (3 s)
    // would have found it: the pause's bucket says which.
    assert!(p99 <= 2_000.0, "relay pause p99 over {p99} ms");
}

/// Sends `cmd` to node `to` as node `from` at `epoch`: what a deposed Control would send.
async fn command_as(
    c: &LocalCluster,
    from: u64,
    to: u64,
    epoch: u64,
    cmd: smart_proto::agent::AgentCommand,
) -> smart_proto::agent::AgentReply {
    use smart_api::{NodeProtocol, NodeRequest, NodeResponse};
    use smart_transport::Client;
    use smart_transport::tcp::TcpTransport;
    // With node `from`'s real key: what that deposed node itself would present.
    let ep = c.node_endpoint(from, 9_999);
    let addr = c.nodes[(to - 1) as usize].addr.to_string();
    let client = Client::<NodeProtocol>::connect(&TcpTransport, &addr, ep)
        .await
        .unwrap();
    let body = NodeRequest::Agent { epoch, cmd };
    match client.request(body, Duration::from_secs(5)).await.unwrap() {
        NodeResponse::Agent(r) => r,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_controls_start_is_refused_at_agent86_and_runs_nothing() {
    use smart_proto::agent::{AgentCommand, AgentReply, LaunchSpec};
    let (mut c, (old, old_epoch), _) = case(1, 30, 3).await;
    let all = c.running();
    // Depose it: kill -9, a new Control is elected at a higher epoch and commands the agents.
    c.kill(old).unwrap();
    let rest: Vec<u64> = all.iter().copied().filter(|&n| n != old).collect();
    c.wait_agreed_control(&rest, Duration::from_secs(10), |n, e| {
        n != old && e > old_epoch
    })
    .await
    .unwrap();
    // The new Control commands the agents at its epoch: a round of it has reached them.
    cluster::wait_registry_copies(&c, &rest, 1).await;
    let agent = *rest.iter().find(|&&n| n != fe_node(&c)).unwrap();
    let marker = c.dir().join("stale-start-ran");
    let cmd = AgentCommand::Start {
        instance: "zombie.1".into(),
        launch: LaunchSpec {
            service: "x".into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                format!("touch {}; sleep 30", marker.display()),
            ],
            ..Default::default()
        },
        reservation: Default::default(),
    };
    match command_as(&c, old, agent, old_epoch, cmd).await {
        AgentReply::Refused { epoch, highest } => {
            assert_eq!(epoch, old_epoch);
            assert!(highest > old_epoch);
        }
        other => panic!("n{agent} executed a stale start: {other:?}"),
    }
    // The refusal is the positive signal: Agent86 answers it before it would launch
    // anything, and it launched nothing, so the marker cannot appear later.
    assert!(!marker.exists(), "the stale start ran a process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_through_the_front_end_while_its_distributor_migrates() {
    let Some(ffmpeg) = require_bin("ffmpeg") else {
        return;
    };
    let (c, _, fe) = case(1, 20, 3).await;
    let url = format!("{fe}/watch/v0");
    // ffmpeg reads at its own pace; -re makes it read at the video's rate, so the
    // migration happens mid-stream.
    let mut cmd = tokio::process::Command::new(&ffmpeg);
    cmd.args(["-hide_banner", "-nostdin", "-v", "error", "-xerror", "-re"])
        .args([
            "-reconnect",
            "1",
            "-reconnect_streamed",
            "1",
            "-reconnect_delay_max",
            "1",
        ])
        .args(["-i", &url, "-f", "null", "-"])
        .kill_on_drop(true);
    let child = cmd.output();
    let player =
        tokio::spawn(async move { tokio::time::timeout(Duration::from_secs(45), child).await });
    let placed = wait_services(&c, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let node = placed[0].placement.node;
    let cl = c
        .client(fe_node(&c))
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(30));
    assert_eq!(
        cl.request(Request::Drain { node }).await.unwrap(),
        Response::Ok
    );
    let out = player.await.unwrap().expect("ffmpeg timed out").unwrap();
    let moved = services(&c, fe_node(&c)).await;
    assert!(moved.iter().all(|s| s.placement.node != node), "{moved:?}");
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ffmpeg logs its reconnect ("Stream ends prematurely"); decode errors are what count.
    let err = String::from_utf8_lossy(&out.stderr);
    for bad in [
        "corrupt",
        "rror while decoding",
        "discontinuity",
        "Invalid data",
    ] {
        assert!(!err.contains(bad), "ffmpeg saw {bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_control_and_a_service_node_together_loses_no_service() {
    let (mut c, (control, epoch), _) = case(4, 60, 5).await;
    let all = c.running();
    // Services admitted through the message API, with no viewers to bring them back: only
    // the Control's registry and the desired-state log know them.
    admit_api_services(&c, 4).await;
    let placed = services(&c, fe_node(&c)).await;
    assert_eq!(placed.len(), 4);
    let victim = placed
        .iter()
        .map(|s| s.placement.node.0)
        .find(|&n| n != control)
        .expect("a service off the control node");
    // The registry copy listing all four must reach every node: two copies accepted from
    // here on include one made now.
    cluster::wait_registry_copies(&c, &all, 2).await;
    c.kill(control).unwrap();
    c.kill(victim).unwrap();
    let rest: Vec<u64> = all
        .iter()
        .copied()
        .filter(|&n| n != control && n != victim)
        .collect();
    c.wait_agreed_control(&rest, Duration::from_secs(10), |n, e| {
        n != control && e > epoch
    })
    .await
    .unwrap();
    let mut last = Vec::new();
    for _ in 0..200 {
        last = services(&c, fe_node(&c)).await;
        if last.len() == 4
            && last
                .iter()
                .all(|s| s.placement.node.0 != control && s.placement.node.0 != victim)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("services lost: {last:?}\n{}", c.log_tail(rest[0], 30));
}

/// Clients the Control has admitted, over all services.
async fn admitted(c: &LocalCluster) -> u64 {
    services(c, fe_node(c))
        .await
        .iter()
        .map(|s| s.clients)
        .sum()
}

/// The front-end answers a redirect and never sees viewers leave: the Control releases their
/// admissions from the distributor's own client count (after the grace period).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_who_leave_are_released_from_the_distributors_client_count() {
    let (c, _, fe) = case(1, 120, 2).await;
    let stay = viewers(&fe, 2, 1, Duration::ZERO);
    let leave = viewers(&fe, 4, 1, Duration::ZERO);
    let mut n = 0;
    for _ in 0..200 {
        n = admitted(&c).await;
        if n >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(n, 6, "all six viewers admitted");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left = leave.finish().await;
    assert!(left.iter().all(|(_, r)| r.integrity_errors == 0));
    // Grace (10 s after the last admission) plus two refreshes, with margin.
    let mut dropped = false;
    for _ in 0..100 {
        n = admitted(&c).await;
        if n == 2 {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        dropped,
        "admitted clients stayed at {n}\n{}",
        c.log_tail(1, 40)
    );
    let kept = stay.finish().await;
    for (video, r) in &kept {
        assert_eq!(r.integrity_errors, 0, "{video}: {r:?}");
    }
}

/// Admits `n` distributors through the message API (no viewers: only the Control's state
/// and the desired-state log know them).
async fn admit_api_services(c: &LocalCluster, n: usize) {
    let cl = c
        .client(fe_node(c))
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(15));
    let fe_cfg =
        smart_config::NodeConfig::load(&c.dir().join(format!("n{}.toml", fe_node(c)))).unwrap();
    for v in 0..n {
        let spec = smart_frontend::spec_for(
            &fe_cfg.frontend,
            &format!("v{v}"),
            fe_cfg.frontend.bitrate_bps,
            None,
        );
        let r = cl.request(Request::AdmitService(spec)).await.unwrap();
        assert!(matches!(r, Response::Placed(_)), "{r:?}");
    }
}

/// Desired state survives a whole-cluster stop: every node stopped (SIGTERM), every node
/// started again, and the services admitted before run again, restored from the
/// desired-state log (no registry copy survives a restart: it lives in memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_restores_admitted_services() {
    let (mut c, _, _) = case(3, 60, 4).await;
    admit_api_services(&c, 3).await;
    assert_eq!(wait_services(&c, 3).await.len(), 3);
    let all = c.running();
    for &n in &all {
        c.terminate(n).unwrap();
    }
    for &n in &all {
        c.wait_exit(n, Duration::from_secs(15)).unwrap();
    }
    for &n in &all {
        c.start_node(n).unwrap();
    }
    c.wait_agreed_control(&all, Duration::from_secs(15), |_, _| true)
        .await
        .unwrap();
    let back = wait_services(&c, 3).await;
    let mut names: Vec<String> = back
        .iter()
        .map(|s| s.placement.service.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["video-v0", "video-v1", "video-v2"], "{back:?}");
}

/// A change of the desired state on a side without a majority of the control nodes is
/// refused, naming why, and nothing is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_without_a_majority_of_control_nodes_is_refused_naming_why() {
    let (mut c, (control, epoch), _) = case(1, 60, 4).await;
    // Two of the four members stay: three are needed.
    let stop: Vec<u64> = c
        .running()
        .into_iter()
        .filter(|&n| n != fe_node(&c))
        .take(2)
        .collect();
    for &n in &stop {
        c.kill(n).unwrap();
    }
    let rest: Vec<u64> = c.running();
    c.wait_agreed_control(&rest, Duration::from_secs(15), |n, e| {
        !stop.contains(&n) && (n == control || e > epoch)
    })
    .await
    .unwrap();
    let cl = c
        .client(fe_node(&c))
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(30));
    let fe_cfg =
        smart_config::NodeConfig::load(&c.dir().join(format!("n{}.toml", fe_node(&c)))).unwrap();
    let spec = smart_frontend::spec_for(&fe_cfg.frontend, "v0", fe_cfg.frontend.bitrate_bps, None);
    // The new Control may still be rebuilding: retry only what says so.
    let mut r = cl
        .request(Request::AdmitService(spec.clone()))
        .await
        .unwrap();
    for _ in 0..100 {
        match &r {
            Response::Error(smart_api::ApiError::Rebuilding | smart_api::ApiError::NoControl) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                r = cl
                    .request(Request::AdmitService(spec.clone()))
                    .await
                    .unwrap();
            }
            _ => break,
        }
    }
    match &r {
        Response::Error(smart_api::ApiError::NotCommitted { reason }) => {
            assert!(reason.contains("no majority"), "{reason}")
        }
        other => panic!("expected NotCommitted, got {other:?}"),
    }
    assert!(services(&c, fe_node(&c)).await.is_empty());
}
