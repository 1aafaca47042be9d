//! The QoS loop on real processes (docs/DESIGN.md §3): class profiles are cluster state
//! (stored over the HTTP API and the CLI, kept across a Control failover), reservations
//! come from them and are enforced by the cgroup driver, idle services are stopped, and a
//! node that fails its health check is drained and undrained when it recovers.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use smart_bench::cluster::ClusterSpec;
use smart_testkit::cluster::{self, Http};

const SMART: &str = env!("CARGO_BIN_EXE_smart");

fn spec(admission: &str, extra: &str) -> ClusterSpec {
    let mut s = cluster::spec(SMART, 3, cluster::QUIET_LOG);
    s.admission_toml = admission.into();
    s.extra_toml = extra.into();
    s
}

/// A flat profile: `cpu` cores and `mem` bytes in every interval, no network.
fn flat(class: &str, cpu: f64, mem: u64) -> Value {
    json!({
        "version": 1, "service": class, "interval_ms": 1000,
        "base": {"cpu_cores": vec![cpu; 32], "net_bps": vec![0.0; 32], "mem_bytes": vec![mem; 32]},
        "working_set_bytes": mem,
    })
}

fn service(name: &str, class: &str, command: &[&str]) -> Value {
    json!({"name": name, "class": class, "command": command})
}

fn a_listener() -> Vec<String> {
    [
        SMART,
        "distributor",
        "--listen",
        "{listen}",
        "--origin",
        "http://127.0.0.1:9",
    ]
    .map(String::from)
    .to_vec()
}

/// Node `node`'s placement as the Control sees it (`GET /v1/nodes`).
async fn placement(h: &Http, base: &str, read: &str, node: u64) -> Option<Value> {
    let v = h.get_ok(&format!("{base}/v1/nodes"), read).await;
    v["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node_id"] == node)
        .map(|n| n["placement"].clone())
}

fn find<'a>(services: &'a Value, name: &str) -> Option<&'a Value> {
    services["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_are_stored_by_the_cli_drive_reservations_and_survive_a_control_failover() {
    let (mut c, control, epoch) = cluster::start(spec("", "")).await;
    let follower = (1..=3).find(|&n| n != control).unwrap();
    let base = c.http_url(follower);
    let (admin, read) = (c.admin_token().to_string(), c.read_token().to_string());
    let h = Http::new();

    // `smart profiles put` from a file, as `smart profile` writes one.
    let file = c.dir().join("transcoder.json");
    std::fs::write(&file, flat("transcoder", 0.30, 48 << 20).to_string()).unwrap();
    let out = cluster::smart_cli(
        SMART,
        &["profiles", "put", "transcoder", file.to_str().unwrap()],
        &base,
        &admin,
    );
    assert!(out.status.success(), "{out:?}");
    let out = cluster::smart_cli(SMART, &["profiles", "list", "--json"], &base, &read);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = list["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["class"] == "transcoder")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(
        (t["source"].as_str(), t["version"].as_u64()),
        (Some("measured"), Some(1))
    );
    // A broken profile is refused with the reason; nothing changes.
    let mut bad = flat("transcoder", 0.30, 1);
    bad["base"]["cpu_cores"][3] = json!(-1.0);
    let (s, v) = h
        .call(
            Method::PUT,
            &format!("{base}/v1/profiles/transcoder"),
            Some(&admin),
            Some(bad),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("negative"),
        "{v}"
    );

    // The reservation of a transcoder is its profile's, not the distributor default's.
    let cmd: Vec<String> = a_listener();
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let (s, p) = h
        .call(
            Method::POST,
            &format!("{base}/v1/services"),
            Some(&admin),
            Some(service("t1", "transcoder", &cmd)),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let (s, p) = h
        .call(
            Method::POST,
            &format!("{base}/v1/services"),
            Some(&admin),
            Some(service("d1", "distributor", &cmd)),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let all = h.get_ok(&format!("{base}/v1/services"), &read).await;
    let t1 = find(&all, "t1").unwrap();
    assert_eq!(t1["profile"], "measured", "{t1}");
    let cpu = t1["reserved"]["cpu_cores"].as_f64().unwrap();
    assert!(
        (cpu - 0.30).abs() < 0.01,
        "reserved {cpu} cores for a 0.30-core profile"
    );
    assert!(
        t1["reserved"]["memory_bytes"].as_u64().unwrap() >= 48 << 20,
        "{t1}"
    );
    let d1 = find(&all, "d1").unwrap();
    assert_eq!(d1["profile"], "default", "{d1}");
    assert!(d1["reserved"]["cpu_cores"].as_f64().unwrap() < 0.1, "{d1}");
    assert_eq!(
        t1["limits_enforced"], true,
        "the cgroup driver is the default: {t1}"
    );

    // The Control dies; the new one admits from the same profile.
    // The registry copy with the profile must reach the other nodes first: two copies
    // accepted from here on include one made now.
    cluster::wait_registry_copies(&c, &[1, 2, 3], 2).await;
    c.kill(control).unwrap();
    let alive: Vec<u64> = (1..=3).filter(|&n| n != control).collect();
    c.wait_agreed_control(&alive, Duration::from_secs(10), |n, e| {
        n != control && e > epoch
    })
    .await
    .unwrap();
    let base = c.http_url(alive[0]);
    let show = cluster::eventually(
        Duration::from_secs(10),
        "the profile on the new Control",
        || {
            let (h, url, read) = (&h, format!("{base}/v1/profiles/transcoder"), read.clone());
            async move {
                let (s, v) = h.call(Method::GET, &url, Some(&read), None).await;
                (s == 200).then_some(v)
            }
        },
    )
    .await;
    assert_eq!(show["source"], "measured", "{show}");
    assert_eq!(show["profile"]["base"]["cpu_cores"][0], 0.30, "{show}");
    let (s, p) = h
        .call(
            Method::POST,
            &format!("{base}/v1/services"),
            Some(&admin),
            Some(service("t2", "transcoder", &cmd)),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let all = h.get_ok(&format!("{base}/v1/services"), &read).await;
    let t2 = find(&all, "t2").unwrap();
    assert_eq!(t2["profile"], "measured", "{t2}");
    assert!((t2["reserved"]["cpu_cores"].as_f64().unwrap() - 0.30).abs() < 0.01);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_loop_is_held_at_its_reservation_by_the_cgroup_driver() {
    // Limits at the reservation itself (no headroom), so the cap is the profile's 0.25.
    let (c, control, _) = cluster::start(spec(
        "cpu_headroom = 1.0\nidle_stop_after = \"0s\"",
        cluster::ALLOW_SHELL,
    ))
    .await;
    let base = c.http_url(control);
    let (admin, read) = (c.admin_token().to_string(), c.read_token().to_string());
    let h = Http::new();
    let (s, v) = h
        .call(
            Method::PUT,
            &format!("{base}/v1/profiles/spin"),
            Some(&admin),
            Some(flat("spin", 0.25, 16 << 20)),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, p) = h
        .call(
            Method::POST,
            &format!("{base}/v1/services"),
            Some(&admin),
            Some(service(
                "spin",
                "spin",
                &["sh", "-c", "while :; do :; done"],
            )),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    // Samples of its usage over ~6 s (Agent86 samples every second).
    let mut used = Vec::new();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let all = h.get_ok(&format!("{base}/v1/services"), &read).await;
        let s = find(&all, "spin").cloned().unwrap();
        assert_eq!(s["limits_enforced"], true, "{s}");
        if let Some(cpu) = s["usage"]["cpu_cores"].as_f64() {
            used.push(cpu);
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    assert!(used.len() >= 3, "too few usage samples: {used:?}");
    let max = used.iter().cloned().fold(0.0, f64::max);
    // An uncapped busy loop takes a whole core; capped, at most the quota plus sampling noise.
    assert!(
        max <= 0.30,
        "a 0.25-core reservation ran at {max:.3} cores: {used:?}"
    );
    assert!(max >= 0.02, "the loop did not run at all: {used:?}");
    // On a loaded machine an uncapped loop may get little CPU too: the kernel's quota for
    // the instance's own cgroup says it is capped, whatever the load.
    let all = h.get_ok(&format!("{base}/v1/services"), &read).await;
    let instance = find(&all, "spin").unwrap()["instance"]
        .as_str()
        .unwrap()
        .to_string();
    let cores = cpu_quota_cores(&instance).expect("the instance's cgroup has a CPU quota");
    assert!((cores - 0.25).abs() < 0.01, "quota of {cores} cores");
}

/// The CPU quota, in cores, of the cgroup of instance `instance` (a directory of that
/// name under an agent's `smart-n*` prefix): v1 `cpu.cfs_quota_us / cpu.cfs_period_us`, or
/// v2 `cpu.max`.
fn cpu_quota_cores(instance: &str) -> Option<f64> {
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let roots = [
        "/sys/fs/cgroup/cpu,cpuacct",
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ];
    for root in roots {
        let Ok(rd) = std::fs::read_dir(root) else {
            continue;
        };
        for prefix in rd.flatten() {
            if !prefix.file_name().to_string_lossy().starts_with("smart-n") {
                continue;
            }
            let dir = prefix.path().join(instance);
            if let (Some(q), Some(p)) = (
                read(dir.join("cpu.cfs_quota_us")),
                read(dir.join("cpu.cfs_period_us")),
            ) {
                let (q, p): (f64, f64) = (q.parse().ok()?, p.parse().ok()?);
                return (q > 0.0).then_some(q / p);
            }
            if let Some(max) = read(dir.join("cpu.max")) {
                let mut it = max.split_whitespace();
                let q: f64 = it.next()?.parse().ok()?;
                let p: f64 = it.next()?.parse().ok()?;
                return Some(q / p);
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_service_is_stopped_and_its_reservation_released() {
    let (c, control, _) = cluster::start(spec("idle_stop_after = \"3s\"", "")).await;
    let base = c.http_url(control);
    let (admin, read) = (c.admin_token().to_string(), c.read_token().to_string());
    let h = Http::new();
    let cmd = a_listener();
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let (s, p) = h
        .call(
            Method::POST,
            &format!("{base}/v1/services"),
            Some(&admin),
            Some(service("idle", "distributor", &cmd)),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let node = p["node"].as_u64().unwrap();
    let reserved = async |h: &Http, base: &str, read: &str| {
        placement(h, base, read, node)
            .await
            .and_then(|p| p["reserved"]["memory_bytes"].as_u64())
    };
    cluster::eventually(
        Duration::from_secs(5),
        "its reservation on its node",
        || async { (reserved(&h, &base, &read).await.unwrap_or(0) > 0).then_some(()) },
    )
    .await;
    cluster::eventually(
        Duration::from_secs(15),
        "the idle service to stop",
        || async {
            find(
                &h.get_ok(&format!("{base}/v1/services"), &read).await,
                "idle",
            )
            .is_none()
            .then_some(())
        },
    )
    .await;
    let text = events(&h, &base, &read).await;
    assert!(
        text.iter()
            .any(|e| e["type"] == "stopped" && e["service"] == "idle"),
        "no stopped event: {text:?}"
    );
    cluster::eventually(
        Duration::from_secs(5),
        "its reservation released",
        || async { (reserved(&h, &base, &read).await.unwrap_or(0) == 0).then_some(()) },
    )
    .await;
}

/// The events the node at `base` kept, oldest first.
async fn events(h: &Http, base: &str, read: &str) -> Vec<Value> {
    let r = h
        .client()
        .get(format!("{base}/v1/events?from=0&follow=false"))
        .bearer_auth(read)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text()
        .await
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_command_drains_its_node_and_recovery_undrains_it() {
    // Each node's check fails while a file named after its pid exists ($PPID of the shell
    // is the node process).
    let flags = tempfile::tempdir().unwrap();
    let dir = flags.path().display().to_string();
    let health = format!(
        "[health]\ncommand = [\"sh\", \"-c\", \"test ! -e {dir}/sick-$PPID\"]\nfail_after = 2\nrecover_after = 2\n"
    );
    let (mut c, control, _) = cluster::start(spec("idle_stop_after = \"0s\"", &health)).await;
    let sick = (1..=3).find(|&n| n != control).unwrap();
    let base = c.http_url(control);
    let (admin, read) = (c.admin_token().to_string(), c.read_token().to_string());
    let h = Http::new();
    let drained = async |h: &Http, base: &str, read: &str| {
        placement(h, base, read, sick)
            .await
            .and_then(|p| p["drained"].as_bool())
    };
    cluster::eventually(
        Duration::from_secs(5),
        "the Control's view of the node",
        || async { (drained(&h, &base, &read).await == Some(false)).then_some(()) },
    )
    .await;
    let pid = c.nodes[(sick - 1) as usize].child.as_ref().unwrap().id();
    let flag = Path::new(&dir).join(format!("sick-{pid}"));
    std::fs::write(&flag, b"").unwrap();
    cluster::eventually(Duration::from_secs(15), "the sick node drained", || async {
        (drained(&h, &base, &read).await == Some(true)).then_some(())
    })
    .await;
    // Nothing is placed on it while it is sick.
    let cmd = a_listener();
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    for i in 0..3 {
        let (s, p) = h
            .call(
                Method::POST,
                &format!("{base}/v1/services"),
                Some(&admin),
                Some(service(&format!("s{i}"), "distributor", &cmd)),
            )
            .await;
        assert_eq!(s, 201, "{p}");
        assert_ne!(p["node"].as_u64(), Some(sick), "placed on a sick node: {p}");
    }
    std::fs::remove_file(&flag).unwrap();
    cluster::eventually(Duration::from_secs(15), "the node undrained", || async {
        (drained(&h, &base, &read).await == Some(false)).then_some(())
    })
    .await;
    let health: Vec<bool> = events(&h, &base, &read)
        .await
        .iter()
        .filter(|e| e["type"] == "node_health" && e["node"] == sick)
        .filter_map(|e| e["healthy"].as_bool())
        .collect();
    assert_eq!(health, vec![false, true]);
    c.kill(sick).unwrap();
}
