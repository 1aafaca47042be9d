//! Real `smart node` processes in Linux network namespaces joined by a bridge (docs/DESIGN.md §7
//! level 4): heartbeats by multicast across the bridge, a host partitioned by taking its
//! bridge port down or by nftables drop rules, both election modes, heal → one Control.
//!
//! Needs root and iproute2 (nftables for the nft tests). Without them each test prints why
//! it is skipped and returns, unless `SMART_REQUIRE_NETNS=1` (CI), where that is a failure.
//!
//! Layout: one namespace per host plus a "switch" namespace holding the bridge, so nothing
//! is created in the root namespace. Names start with `smtn` and the process id; any
//! leftover `smtn*` namespace from an earlier crashed run is removed first. Every wait is
//! bounded and the guard removes namespaces and processes even when a test panics.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_smart");

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the suite can run here; prints the reason and returns false if not.
fn can_run(need_nft: bool) -> bool {
    let required = std::env::var_os("SMART_REQUIRE_NETNS").is_some();
    let mut why = None;
    if !nix::unistd::geteuid().is_root() {
        why = Some("not root".to_string());
    } else if sh(&["ip", "-V"]).is_err() {
        why = Some("iproute2 (ip) not installed".to_string());
    } else if need_nft && sh(&["nft", "--version"]).is_err() {
        why = Some("nftables (nft) not installed".to_string());
    }
    match why {
        None => true,
        Some(w) if required => panic!("SMART_REQUIRE_NETNS is set but {w}"),
        Some(w) => {
            println!("skipped: network-namespace suite needs root, ip and nft: {w}");
            false
        }
    }
}

struct Net {
    prefix: String,
    hosts: usize,
    dir: PathBuf,
    procs: Vec<Option<Child>>,
}

impl Net {
    fn ns(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    fn ip(i: usize) -> String {
        format!("10.77.0.{i}")
    }

    /// Creates `hosts` namespaces on a bridge and starts a node in each.
    fn start(hosts: usize, mode: &str) -> Net {
        // Leftovers of a crashed earlier run.
        if let Ok(list) = sh(&["ip", "netns", "list"]) {
            for line in list.lines() {
                let name = line.split_whitespace().next().unwrap_or("");
                if name.starts_with("smtn") {
                    let _ = sh(&["ip", "netns", "del", name]);
                }
            }
        }
        let prefix = format!("smtn{}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("{prefix}-files"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ids: Vec<u64> = (1..=hosts as u64).collect();
        smart_supervision::keys::generate(&dir, &ids).unwrap();
        let mut net = Net {
            prefix,
            hosts,
            dir,
            procs: Vec::new(),
        };
        let sw = net.switch();
        sh(&["ip", "netns", "add", &sw]).unwrap();
        let ex = |ns: &str, cmd: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", ns];
            v.extend_from_slice(cmd);
            sh(&v).unwrap();
        };
        ex(&sw, &["ip", "link", "add", "br0", "type", "bridge"]);
        // No IGMP querier here: let the bridge flood multicast instead of snooping.
        ex(
            &sw,
            &[
                "ip",
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        );
        ex(&sw, &["ip", "link", "set", "br0", "up"]);
        let members: Vec<String> = (1..=hosts).map(|i| i.to_string()).collect();
        for i in 1..=hosts {
            let ns = net.ns(i);
            sh(&["ip", "netns", "add", &ns]).unwrap();
            let port = format!("p{i}");
            sh(&[
                "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &sw,
            ])
            .unwrap();
            ex(&sw, &["ip", "link", "set", &port, "master", "br0"]);
            ex(&sw, &["ip", "link", "set", &port, "up"]);
            let cidr = format!("{}/24", Net::ip(i));
            ex(&ns, &["ip", "addr", "add", &cidr, "dev", "eth0"]);
            ex(&ns, &["ip", "link", "set", "eth0", "up"]);
            ex(&ns, &["ip", "link", "set", "lo", "up"]);
            let cfg = format!(
                "node_id = {i}\ndata_dir = \"n{i}\"\nlisten = \"{}:7101\"\ncluster_key_file = \"cluster.key\"\nnode_key_file = \"n{i}.key\"\nnode_public_keys_file = \"nodes.pub\"\n\n[multicast]\ngroup = \"239.255.77.1\"\nport = 7100\ninterface = \"eth0\"\nloopback = false\n\n[election]\nmode = \"{mode}\"\nmembers = [{}]\n",
                Net::ip(i),
                members.join(", ")
            );
            std::fs::write(net.dir.join(format!("n{i}.toml")), cfg).unwrap();
        }
        for i in 1..=hosts {
            let child = net.spawn(i);
            net.procs.push(Some(child));
        }
        net
    }

    fn spawn(&self, i: usize) -> Child {
        let log = std::fs::File::create(self.dir.join(format!("n{i}.log"))).unwrap();
        Command::new("ip")
            .args(["netns", "exec", &self.ns(i), BIN, "node", "--config"])
            .arg(self.dir.join(format!("n{i}.toml")))
            .env("SMART_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// `smart status --json` run inside host `i`'s namespace.
    fn status(&self, i: usize) -> Option<serde_json::Value> {
        let addr = format!("{}:7101", Net::ip(i));
        let key = self.dir.join("cluster.key");
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(i),
                BIN,
                "status",
                "--json",
                "--connect",
            ])
            .arg(&addr)
            .arg("--key")
            .arg(&key)
            .env("SMART_LOG", "error")
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `(control node, epoch)` as host `i` sees it.
    fn control(&self, i: usize) -> Option<(u64, u64)> {
        let s = self.status(i)?;
        Some((
            s["control"]["node_id"].as_u64()?,
            s["control"]["epoch"].as_u64()?,
        ))
    }

    fn counter(&self, i: usize, name: &str) -> Option<u64> {
        let s = self.status(i)?;
        s["counters"]
            .as_array()?
            .iter()
            .find(|kv| kv[0] == name)
            .and_then(|kv| kv[1].as_u64())
    }

    /// Waits until every host in `hosts` sees the same Control satisfying `pred`.
    fn wait_agree(
        &self,
        hosts: &[usize],
        timeout: Duration,
        pred: impl Fn(u64) -> bool,
    ) -> (u64, u64) {
        let deadline = Instant::now() + timeout;
        loop {
            let views: Vec<Option<(u64, u64)>> = hosts.iter().map(|&i| self.control(i)).collect();
            if let Some(Some(first)) = views.first()
                && pred(first.0)
                && views.iter().all(|v| *v == Some(*first))
            {
                return *first;
            }
            assert!(
                Instant::now() < deadline,
                "hosts {hosts:?} did not agree on a control in {timeout:?}: {views:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        (1..=self.hosts)
            .map(|i| {
                let t =
                    std::fs::read_to_string(self.dir.join(format!("n{i}.log"))).unwrap_or_default();
                let lines: Vec<&str> = t.lines().collect();
                format!(
                    "--- n{i}\n{}",
                    lines[lines.len().saturating_sub(8)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sets host `i`'s switch port `up` or `down` (down cuts it off the bridge).
    fn set_port(&self, i: usize, state: &str) {
        let port = format!("p{i}");
        let sw = self.switch();
        sh(&[
            "ip", "netns", "exec", &sw, "ip", "link", "set", &port, state,
        ])
        .unwrap();
    }

    fn unplug(&self, i: usize) {
        self.set_port(i, "down");
    }

    fn plug(&self, i: usize) {
        self.set_port(i, "up");
    }

    /// Runs an nft script inside host `i`'s namespace.
    fn nft(&self, i: usize, script: &str) {
        let path = self.dir.join(format!("nft-{i}.nft"));
        std::fs::write(&path, script).unwrap();
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.ns(i),
            "nft",
            "-f",
            path.to_str().unwrap(),
        ])
        .unwrap();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in self.procs.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 1..=self.hosts {
            let _ = sh(&["ip", "netns", "del", &self.ns(i)]);
        }
        let _ = sh(&["ip", "netns", "del", &self.switch()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn available_mode_partition_keeps_both_sides_alive_and_heal_leaves_one_control() {
    if !can_run(false) {
        return;
    }
    let net = Net::start(5, "available");
    let all: Vec<usize> = (1..=5).collect();
    let (c, e) = net.wait_agree(&all, Duration::from_secs(20), |_| true);
    let c = c as usize;
    net.unplug(c);
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != c).collect();
    // The majority side elects a new Control ...
    let (c2, e2) = net.wait_agree(&rest, Duration::from_secs(10), |n| n as usize != c);
    assert!(e2 > e);
    // ... and the cut-off node, in available mode, still considers itself Control (the
    // thesis: one live node can regenerate the system).
    let (own, _) = net.control(c).expect("isolated node answers");
    assert_eq!(own as usize, c);
    net.plug(c);
    let (after, _) = net.wait_agree(&all, Duration::from_secs(15), |_| true);
    assert!(
        after == c as u64 || after == c2,
        "unexpected control n{after}"
    );
}

#[test]
fn majority_mode_minority_control_stops_acting_and_heal_leaves_one_control() {
    if !can_run(false) {
        return;
    }
    let net = Net::start(5, "majority");
    let all: Vec<usize> = (1..=5).collect();
    // An agreed Control that acts (the first election may still re-assert meanwhile).
    let mut c = 0;
    net.wait_until(Duration::from_secs(20), || {
        let (n, _) = net.wait_agree(&all, Duration::from_secs(20), |_| true);
        c = n as usize;
        net.counter(c, "control_acting") == Some(1)
    });
    net.unplug(c);
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != c).collect();
    let (c2, _) = net.wait_agree(&rest, Duration::from_secs(10), |n| n as usize != c);
    // The isolated Control lost its majority of leases: it must not act.
    net.wait_until(Duration::from_secs(5), || {
        net.counter(c, "control_acting") == Some(0)
    });
    // Never two acting Controls: sample both for a while.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let acting = [c, c2 as usize]
            .iter()
            .filter(|&&i| net.counter(i, "control_acting") == Some(1))
            .count();
        assert!(acting <= 1, "two acting controls");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(net.counter(c2 as usize, "control_acting"), Some(1));
    net.plug(c);
    net.wait_agree(&all, Duration::from_secs(15), |_| true);
}

#[test]
fn nftables_partition_and_random_loss() {
    if !can_run(true) {
        return;
    }
    let net = Net::start(3, "available");
    let all: Vec<usize> = (1..=3).collect();
    let (c, e) = net.wait_agree(&all, Duration::from_secs(20), |_| true);
    let c = c as usize;
    // Cut the Control's host off with nftables (everything in and out of eth0 dropped).
    net.nft(
        c,
        "table inet smartcut {\n chain input {\n  type filter hook input priority 0; policy accept;\n  iifname \"eth0\" drop\n }\n chain output {\n  type filter hook output priority 0; policy accept;\n  oifname \"eth0\" drop\n }\n}\n",
    );
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != c).collect();
    let (c2, e2) = net.wait_agree(&rest, Duration::from_secs(10), |n| n as usize != c);
    assert!(e2 > e && c2 as usize != c);
    net.nft(c, "delete table inet smartcut\n");
    net.wait_agree(&all, Duration::from_secs(15), |_| true);
    // Now 20 % random loss of heartbeats on every host: still one Control, and stable.
    for &i in &all {
        net.nft(
            i,
            "table inet smartloss {\n chain input {\n  type filter hook input priority 0; policy accept;\n  iifname \"eth0\" udp dport 7100 numgen random mod 100 < 20 drop\n }\n}\n",
        );
    }
    let (after, e_after) = net.wait_agree(&all, Duration::from_secs(20), |_| true);
    assert!(e_after >= e);
    // Stable under loss: the same Control a few seconds later.
    std::thread::sleep(Duration::from_secs(3));
    let (again, _) = net.wait_agree(&all, Duration::from_secs(10), |_| true);
    assert_eq!(again, after, "control flapped under 20 % loss");
}

impl Net {
    fn wait_until(&self, timeout: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !f() {
            assert!(
                Instant::now() < deadline,
                "condition not reached in {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
