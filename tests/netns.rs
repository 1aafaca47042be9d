//! Real `smart node` processes in Linux network namespaces joined by a bridge (docs/DESIGN.md §7
//! level 4): heartbeats by multicast across the bridge, a host partitioned by taking its
//! bridge port down or by nftables drop rules, both election modes, heal → one Control;
//! services moved across hosts by a drain; and the nemesis (seven faults with services and
//! byte-checking viewers, docs/figures.md "Faults with services on namespace hosts").
//!
//! Needs root and iproute2 (nftables for the nft tests). Without them each test prints why
//! it is skipped and returns, unless `SMART_REQUIRE_NETNS=1` (CI), where that is a failure.
//!
//! Layout: one namespace per host plus a "switch" namespace holding the bridge, so nothing
//! is created in the root namespace. Names start with `smtn` and the process id; any
//! leftover `smtn*` namespace from an earlier crashed run is removed first. Every wait is
//! bounded and the guard removes namespaces and processes even when a test panics.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smart_bench::netns::kill_namespace;
use smart_testkit::p50;

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
        // Skipped visibly, or a failure under SMART_REQUIRE_TOOLS=1 like every other skip.
        Some(w) => smart_testkit::require::require::<()>(
            "the network-namespace suite (root, ip, nft)",
            None,
            &w,
        )
        .is_some(),
    }
}

struct Net {
    prefix: String,
    hosts: usize,
    dir: PathBuf,
    procs: Vec<Option<Child>>,
    client: bool,
    /// An admin token of every node's HTTP API (`<ip>:7104`), which the CLI speaks.
    token: String,
}

/// The client namespace's address (viewers and the origin).
const CLIENT_IP: &str = "10.77.0.100";

impl Net {
    fn ns(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    fn client_ns(&self) -> String {
        format!("{}c", self.prefix)
    }

    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    fn ip(i: usize) -> String {
        format!("10.77.0.{i}")
    }

    /// Creates `hosts` namespaces on a bridge and starts a node in each.
    fn start(hosts: usize, mode: &str) -> Net {
        Net::start_with(hosts, mode, &|_| String::new(), "", false, false)
    }

    /// [`Net::start`] with `top(i)` added to host `i`'s top-level keys and `tables` to every
    /// config, and with `client` a client namespace (`<prefix>c`, [`CLIENT_IP`]) on the
    /// bridge that runs no node. With `wildcard`, nodes bind `0.0.0.0:7101` and advertise
    /// their IP (`advertise`; instances then use it as their data plane).
    fn start_with(
        hosts: usize,
        mode: &str,
        top: &dyn Fn(usize) -> String,
        tables: &str,
        client: bool,
        wildcard: bool,
    ) -> Net {
        // Leftovers of a crashed earlier run: namespaces named after a test process that no
        // longer exists (`smtn<pid>...`); a live one's belong to a suite running right now.
        if let Ok(list) = sh(&["ip", "netns", "list"]) {
            for line in list.lines() {
                let name = line.split_whitespace().next().unwrap_or("");
                let Some(rest) = name.strip_prefix("smtn") else {
                    continue;
                };
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let owner_alive = digits
                    .parse::<u32>()
                    .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
                if !owner_alive {
                    kill_namespace(name);
                    let _ = sh(&["ip", "netns", "del", name]);
                }
            }
        }
        // The whole pid: the leftover sweep above tells live owners from dead ones by it.
        let prefix = format!("smtn{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("{prefix}-files"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ids: Vec<u64> = (1..=hosts as u64).collect();
        smart_transport::keys::generate(&dir, &ids).unwrap();
        let token = {
            use sha2::Digest;
            let b: [u8; 32] = rand::random();
            let token = format!(
                "smart_{}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            );
            let digest: String = sha2::Sha256::digest(token.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            std::fs::write(
                dir.join("tokens.toml"),
                format!(
                    "[[token]]\nname = \"test-admin\"\nscope = \"admin\"\nsha256 = \"{digest}\"\n"
                ),
            )
            .unwrap();
            token
        };
        let mut net = Net {
            prefix,
            hosts,
            dir,
            procs: Vec::new(),
            client,
            token,
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
        // Host `hosts + 1` is the client namespace when there is one.
        for i in 1..=hosts + client as usize {
            let is_client = i > hosts;
            let ns = if is_client {
                net.client_ns()
            } else {
                net.ns(i)
            };
            sh(&["ip", "netns", "add", &ns]).unwrap();
            let port = format!("p{i}");
            sh(&[
                "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &sw,
            ])
            .unwrap();
            ex(&sw, &["ip", "link", "set", &port, "master", "br0"]);
            ex(&sw, &["ip", "link", "set", &port, "up"]);
            let ip = if is_client {
                CLIENT_IP.to_string()
            } else {
                Net::ip(i)
            };
            let cidr = format!("{ip}/24");
            ex(&ns, &["ip", "addr", "add", &cidr, "dev", "eth0"]);
            ex(&ns, &["ip", "link", "set", "eth0", "up"]);
            ex(&ns, &["ip", "link", "set", "lo", "up"]);
            if is_client {
                continue;
            }
            let listen = if wildcard {
                format!("0.0.0.0:7101\"\nadvertise = \"{ip}:7101")
            } else {
                format!("{ip}:7101")
            };
            let cfg = format!(
                "node_id = {i}\ndata_dir = \"n{i}\"\nlisten = \"{listen}\"\ncluster_key_file = \"cluster.key\"\nnode_key_file = \"n{i}.key\"\nnode_public_keys_file = \"nodes.pub\"\nhttp_listen = \"{}:7104\"\ntokens_file = \"tokens.toml\"\n{}\n[multicast]\ngroup = \"239.255.77.1\"\nport = 7100\ninterface = \"eth0\"\nloopback = false\n\n[election]\nmode = \"{mode}\"\nmembers = [{}]\n{tables}\n",
                Net::ip(i),
                top(i),
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
        // Appended: a restarted node's log follows its earlier life's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("n{i}.log")))
            .unwrap();
        Command::new("ip")
            .args(["netns", "exec", &self.ns(i), BIN, "node", "--config"])
            .arg(self.dir.join(format!("n{i}.toml")))
            // `SMART_NETNS_LOG=smart_frontend=debug,info` to look closer.
            .env(
                "SMART_LOG",
                std::env::var("SMART_NETNS_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// `smart status --json` run inside host `i`'s namespace, over its HTTP API.
    fn status(&self, i: usize) -> Option<serde_json::Value> {
        let addr = format!("http://{}:7104", Net::ip(i));
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(i),
                BIN,
                "status",
                "--json",
                "--timeout",
                "2s",
                "--addr",
                &addr,
            ])
            .env("SMART_TOKEN", &self.token)
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
        // `[[name, value], ...]` or `{name: value}`.
        match &s["counters"] {
            serde_json::Value::Object(m) => m.get(name).and_then(|v| v.as_u64()),
            v => v
                .as_array()?
                .iter()
                .find(|kv| kv[0] == name)
                .and_then(|kv| kv[1].as_u64()),
        }
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
        // Every process of every namespace: the nodes, and the instances they started
        // (which outlive a node killed with SIGKILL); then the nodes are reaped.
        let mut spaces: Vec<String> = (1..=self.hosts).map(|i| self.ns(i)).collect();
        if self.client {
            spaces.push(self.client_ns());
        }
        for ns in &spaces {
            kill_namespace(ns);
        }
        for c in self.procs.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &spaces {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        let _ = sh(&["ip", "netns", "del", &self.switch()]);
        if std::env::var_os("SMART_KEEP_NETNS_FILES").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
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
    // The isolated Control lost its majority (its Raft quorum lease): it must not act.
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

// ---- Services across hosts: live migration over the network --------------------------------
//
// Hosts 1..=3 run agents (and may lead); host 4 is the front-end only. The origin and the
// viewers run in the client namespace, inside this test process on a thread that entered
// that namespace (sockets belong to the namespace they were made in). Each host has its own
// IP, so a drain's restore pulls the checkpoint over TCP from the source's export: the Unix
// socket of the source is reachable through the shared filesystem, which is exactly why the
// agent decides by data-plane address and this suite checks the logs for the network path.

const SVC_HOSTS: usize = 4;
const KBPS: u64 = 400;
const EXPORT_PORT: u16 = 7105;

struct Services {
    net: Net,
    token: String,
    /// The front-end's host (the last one).
    fe: usize,
}

fn services_net(dist_args: &str, bitrate_bps: u64, extra: &str) -> Services {
    services_net_on(SVC_HOSTS, "available", dist_args, bitrate_bps, "", extra, 1)
}

/// `hosts` hosts in election `mode`: the last `frontends` the front-end only, the others
/// agents that may lead, all running distributors with `dist_args` from the client
/// namespace's origin; `frontend` more keys of the `[frontend]` table, `extra` TOML tables
/// for every node. Several front-ends bind `0.0.0.0:7102` (an address they share arrives
/// there); one binds its own address.
fn services_net_on(
    hosts: usize,
    mode: &str,
    dist_args: &str,
    bitrate_bps: u64,
    frontend: &str,
    extra: &str,
    frontends: usize,
) -> Services {
    let profile = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/profiles/distributor.json"
    );
    let fe = hosts;
    let top = |i: usize| {
        if i + frontends > hosts {
            let bind = if frontends > 1 {
                "0.0.0.0".to_string()
            } else {
                Net::ip(i)
            };
            format!("roles = [\"front-end\"]\nfrontend_http = \"{bind}:7102\"\n")
        } else {
            "roles = [\"agent\", \"control\"]\n".to_string()
        }
    };
    // Every viewer comes from the client namespace's one address, where a real audience
    // has many: its per-address (and per-video) rate of admissions must not refuse them.
    let viewers = "viewer_admissions_per_sec = 10000.0\nviewer_admissions_burst = 10000\nvideo_admissions_per_sec = 10000.0\nvideo_admissions_burst = 10000\n";
    let tables = format!(
        "\n[frontend]\ndistributor_command = [{BIN:?}, \"distributor\", \"--listen\", \"{{listen}}\", \"--origin\", \"{{origin}}\"{dist_args}]\norigin = \"http://{CLIENT_IP}:8000\"\nbitrate_bps = {bitrate_bps}\n{viewers}{frontend}\n[agent]\nruntime = \"process\"\ncheckpoint_port = {EXPORT_PORT}\n\n[admission]\ndefault_profile = {profile:?}\n{extra}",
    );
    // Wildcard binds: what peers and viewers use must come from `advertise`.
    let net = Net::start_with(hosts, mode, &top, &tables, true, true);
    let token = net.token.clone();
    Services { net, token, fe }
}

impl Services {
    /// `smart <args> --json --addr <front-end API>` run in the client namespace.
    fn cli(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        self.cli_then(args, &[])
    }

    /// [`Self::cli`] with `last` after a `--` (the command of `smart admit`), which must
    /// come after the connection flags.
    fn cli_then(&self, args: &[&str], last: &[String]) -> Result<serde_json::Value, String> {
        let addr = format!("http://{}:7104", Net::ip(self.fe));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.net.client_ns(), BIN])
            .args(args)
            .args(["--json", "--addr", &addr]);
        if !last.is_empty() {
            cmd.arg("--").args(last);
        }
        let out = cmd
            .env("SMART_TOKEN", &self.token)
            .env("SMART_LOG", "error")
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(&text).or_else(|_| {
            // One JSON object per line (events).
            Ok(serde_json::Value::Array(
                text.lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect(),
            ))
        })
    }

    /// `(service, node, instance)` of every admitted service.
    fn placed(&self) -> Vec<(String, u64, String)> {
        let Ok(v) = self.cli(&["services"]) else {
            return vec![];
        };
        v["services"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| {
                        Some((
                            s["name"].as_str()?.to_string(),
                            s["node"].as_u64()?,
                            s["instance"].as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The workload `usage` of `instance` on host `node` (its control socket is a file).
    fn usage(&self, node: u64, instance: &str) -> Result<smart_proto::workload::Usage, String> {
        let sock = self
            .net
            .dir
            .join(format!("n{node}/instances/{instance}.sock"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            smart_proto::workload::WorkloadClient::connect(&sock, Duration::from_secs(2))
                .await
                .map_err(|e| format!("{}: {e}", sock.display()))?
                .usage()
                .await
                .map_err(|e| format!("{}: {e}", sock.display()))
        })
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.net.dir.join(format!("n{i}.log"))).unwrap_or_default()
    }
}

/// Moves this thread into network namespace `ns`: sockets it makes from now on belong there.
fn enter_namespace(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// Serves `videos` generated videos (`v0`, `v1`, ...) at [`CLIENT_IP`]`:8000` on the
/// current runtime (the thread must be in the client namespace).
async fn serve_origin(videos: usize, (bitrate_bps, duration_ms): (u64, u64)) {
    use smart_vod::origin::{Origin, Video};
    use smart_vod::ts::VideoParams;
    let mut o = Origin::new();
    for v in 0..videos {
        let video = Video::generated(VideoParams {
            bitrate_bps,
            duration_ms,
        })
        .unwrap();
        o.add(&format!("v{v}"), video);
    }
    let l = tokio::net::TcpListener::bind(format!("{CLIENT_IP}:8000"))
        .await
        .unwrap();
    tokio::spawn(std::sync::Arc::new(o).serve(l));
}

/// One viewer per `progress` (viewer `i` watches `v{i % videos}` through the front-end on
/// host `fe`, reconnecting through it as players do), started over 2 s, until `stop`;
/// returns each viewer's video and report.
async fn play(
    fe: usize,
    videos: usize,
    bitrate_bps: u64,
    progress: Vec<std::sync::Arc<smart_vod::viewer::Progress>>,
    stop: std::sync::mpsc::Receiver<()>,
) -> Vec<(String, smart_vod::viewer::ViewerReport)> {
    use smart_vod::http::Url;
    use smart_vod::viewer::{Shared, ViewerConfig, run_viewer_watched};
    let (tx, rx) = tokio::sync::watch::channel(false);
    let shared = std::sync::Arc::new(Shared::default());
    let fe = format!("http://{}:7102", Net::ip(fe));
    let n = progress.len();
    let mut handles = Vec::new();
    for (i, p) in progress.into_iter().enumerate() {
        let video = format!("v{}", i % videos);
        let url = Url::parse(&format!("{fe}/watch/{video}")).unwrap();
        let cfg = ViewerConfig {
            url: url.clone(),
            frontend: Some(url),
            bitrate_bps,
            prefetch_bytes: 0,
            start_buffer: Duration::from_millis(500),
            start_offset: 0,
        };
        let (shared, rx) = (shared.clone(), rx.clone());
        let delay = Duration::from_secs(2) * i as u32 / n.max(1) as u32;
        handles.push((
            video,
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                run_viewer_watched(&cfg, &shared, &p, rx).await
            }),
        ));
    }
    let _ = tokio::task::spawn_blocking(move || stop.recv()).await;
    let _ = tx.send(true);
    let mut out = Vec::new();
    for (v, h) in handles {
        out.push((v, h.await.unwrap()));
    }
    out
}

/// Runs `f` on a new thread in the client namespace `ns`, on its own runtime.
fn in_client<T: Send + 'static, F: std::future::Future<Output = T>>(
    ns: String,
    f: impl FnOnce() -> F + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        enter_namespace(&ns);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
}

/// The origin and `n` viewers in the client namespace, until `stop` is sent; returns each
/// viewer's video and report.
fn client_side(
    ns: String,
    fe: usize,
    videos: usize,
    n: usize,
    params: (u64, u64),
    stop: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<Vec<(String, smart_vod::viewer::ViewerReport)>> {
    in_client(ns, move || async move {
        serve_origin(videos, params).await;
        let progress = (0..n).map(|_| Default::default()).collect();
        play(fe, videos, params.0, progress, stop).await
    })
}

/// What [`services_with_viewers`] sets up.
struct Load {
    viewers: usize,
    videos: usize,
    bitrate_bps: u64,
    duration_ms: u64,
    /// Extra arguments of the distributors, TOML array items (`, "--prefill"`).
    dist_args: &'static str,
    /// Extra TOML tables of every node.
    tables: &'static str,
}

impl Load {
    fn small(viewers: usize) -> Self {
        Load {
            viewers,
            videos: 2,
            bitrate_bps: KBPS * 1000,
            duration_ms: 120_000,
            dist_args: "",
            tables: "",
        }
    }
}

/// The front-end's relay resumes as `smart status` shows them: (resumes, pause p50 and p99
/// as the upper bounds of their buckets, longest pause), ms.
fn relay_pauses(s: &Services) -> (u64, f64, f64, u64) {
    let st = s.net.status(s.fe).expect("the front-end's status");
    let get = |k: &str| -> u64 {
        st["counters"]
            .as_array()
            .and_then(|a| a.iter().find(|kv| kv[0] == k))
            .and_then(|kv| kv[1].as_u64())
            .unwrap_or(0)
    };
    (
        get("frontend_relay_resumes"),
        smart_frontend::resume_quantile(&get, 0.5).unwrap_or(f64::NAN),
        smart_frontend::resume_quantile(&get, 0.99).unwrap_or(f64::NAN),
        get("frontend_relay_resume_ms_max"),
    )
}

/// Brings up the service cluster with the viewers of `load`; returns it, the viewers'
/// stop and handle, and the placed services once all run and viewers have played a while.
#[allow(clippy::type_complexity)]
fn services_with_viewers(
    load: Load,
) -> (
    Services,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<Vec<(String, smart_vod::viewer::ViewerReport)>>,
    Vec<(String, u64, String)>,
) {
    let s = services_net(load.dist_args, load.bitrate_bps, load.tables);
    let all: Vec<usize> = (1..=SVC_HOSTS).collect();
    s.net.wait_agree(&all, Duration::from_secs(30), |_| true);
    let (stop, rx) = std::sync::mpsc::channel();
    let viewers = client_side(
        s.net.client_ns(),
        s.fe,
        load.videos,
        load.viewers,
        (load.bitrate_bps, load.duration_ms),
        rx,
    );
    let mut placed = vec![];
    s.net.wait_until(Duration::from_secs(60), || {
        placed = s.placed();
        placed.len() >= load.videos
    });
    std::thread::sleep(Duration::from_secs(4));
    (s, stop, viewers, placed)
}

/// Drains host `node` and waits until each of its services in `placed` runs a new instance
/// elsewhere (the listing names the target node as soon as the move starts, the new
/// instance only when it is over).
fn drain_and_wait(
    s: &Services,
    node: u64,
    placed: &[(String, u64, String)],
) -> Vec<(String, u64, String)> {
    s.cli(&["drain", &node.to_string()]).unwrap();
    let mut after = vec![];
    s.net.wait_until(Duration::from_secs(60), || {
        after = s.placed();
        placed.iter().filter(|p| p.1 == node).all(|(svc, _, old)| {
            after
                .iter()
                .any(|(a, n, inst)| a == svc && *n != node && inst != old)
        })
    });
    after
}

#[test]
fn drain_across_hosts_moves_every_viewer_and_copies_the_cache_over_tcp() {
    if !can_run(false) {
        return;
    }
    let (s, stop, viewers, placed) = services_with_viewers(Load::small(100));
    let node = placed[0].1;
    let moving: Vec<&(String, u64, String)> = placed.iter().filter(|p| p.1 == node).collect();
    let before: Vec<(String, u64)> = moving
        .iter()
        .map(|(svc, n, inst)| {
            let u = s.usage(*n, inst).unwrap();
            (svc.clone(), u.cache_bytes)
        })
        .collect();
    let t = Instant::now();
    let after = drain_and_wait(&s, node, &placed);
    let took = t.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let mut restored_total = 0;
    let mut origin_streams = 0;
    for (svc, cache_before) in &before {
        let (_, to, inst) = after.iter().find(|p| &p.0 == svc).unwrap();
        let u = s.usage(*to, inst).unwrap();
        // The target's log names the network path and the bytes it restored.
        let log = s.log(*to as usize);
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("restored over the network") && l.contains(inst.as_str()))
            .unwrap_or_else(|| panic!("{inst} on n{to} did not restore over TCP\n{log}"));
        let bytes: u64 = line
            .split("bytes=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|b| b.parse().ok())
            .unwrap_or_else(|| panic!("no bytes in {line}"));
        // Restored at least the cache the source held before the drain (it kept serving,
        // so it may have grown), and the target holds what it restored.
        assert!(
            bytes >= *cache_before && bytes > 0,
            "{svc}: restored {bytes} of {cache_before}"
        );
        assert!(
            u.cache_bytes >= bytes,
            "{svc}: target cache {} < restored {bytes}",
            u.cache_bytes
        );
        restored_total += bytes;
        origin_streams += u.origin_streams;
    }
    let _ = stop.send(());
    let reports = viewers.join().unwrap();
    let moved_svcs: Vec<String> = moving.iter().map(|p| p.0.clone()).collect();
    let mut moved_viewers = 0;
    for (video, r) in &reports {
        assert_eq!(r.integrity_errors, 0, "{video}: {r:?}");
        assert_eq!(r.stalls, 0, "{video}: {r:?}");
        assert!(r.http_error.is_none(), "{video}: {r:?}");
        // The default front-end relays: the move is hidden in one unbroken response.
        assert_eq!(r.reconnects, 0, "{video}: {r:?}");
        moved_viewers += moved_svcs.contains(&format!("video-{video}")) as u64;
    }
    // Every live move is reported as such (no "restarted" fallback).
    let events = s.cli(&["events", "--no-follow"]).unwrap().to_string();
    assert!(!events.contains("restore failed"), "{events}");
    let (resumes, pause_p50, pause_p99, pause_max) = relay_pauses(&s);
    println!(
        "{}",
        serde_json::json!({
            "services_moved": moving.len(),
            "drain_ms": took.as_millis() as u64,
            "cache_bytes_restored": restored_total,
            "target_origin_streams": origin_streams,
            "relay_resumes": resumes,
            "pause_p50_ms_at_most": pause_p50,
            "pause_p99_ms_at_most": pause_p99,
            "pause_max_ms": pause_max,
            "viewers": reports.len(),
        })
    );
    assert!(
        resumes >= moved_viewers,
        "{resumes} relay resumes for {moved_viewers} moved viewers"
    );
    // Resumed when the source handed off, not when the relay's 3-s silence timeout would
    // have noticed (the pause goal itself is the benchmark's figure).
    assert!(pause_p99 <= 2_000.0, "relay pause p99 over {pause_p99} ms");
}

#[test]
fn a_restore_that_cannot_reach_its_source_falls_back_visibly() {
    if !can_run(true) {
        return;
    }
    let (s, stop, viewers, placed) = services_with_viewers(Load::small(20));
    let node = placed[0].1;
    // The source's export is unreachable (SYNs dropped); everything else flows.
    s.net.nft(
        node as usize,
        &format!("table inet smartexport {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  tcp dport {EXPORT_PORT} drop\n }}\n}}\n"),
    );
    let after = drain_and_wait(&s, node, &placed);
    assert!(after.iter().all(|p| p.1 != node));
    std::thread::sleep(Duration::from_secs(3));
    let events = s.cli(&["events", "--no-follow"]).unwrap().to_string();
    assert!(
        events.contains("restore failed") && events.contains(&format!(":{EXPORT_PORT}")),
        "no visible fallback in the events: {events}"
    );
    let _ = stop.send(());
    for (video, r) in viewers.join().unwrap() {
        assert_eq!(r.integrity_errors, 0, "{video}: {r:?}");
        assert!(r.http_error.is_none(), "{video}: {r:?}");
    }
}

/// The figure of docs/figures.md ("Across hosts"): a 72 MB cache with 100 viewers moved
/// across hosts by a drain.
/// Prints one JSON object. `cargo nextest run -p smart --test netns --run-ignored only -E
/// 'test(bench_cross_host_migration)' --no-capture` (root).
#[test]
#[ignore = "benchmark: run by .ci/run's benchmark step (--run-ignored only)"]
fn bench_cross_host_migration_of_a_72_mb_cache_with_100_viewers() {
    if !can_run(false) {
        return;
    }
    let (s, stop, viewers, placed) = services_with_viewers(Load {
        viewers: 100,
        videos: 1,
        bitrate_bps: KBPS * 1000,
        duration_ms: 1_800_000,
        dist_args: r#", "--window-mb", "72", "--prefill""#,
        // Viewers, origin and four nodes share this machine's cores: a node starved for
        // half a second must not be declared dead in the middle of the measurement.
        tables: "\n[timing]\ndead_after = \"2s\"\n",
    });
    let (svc, node, inst) = placed[0].clone();
    // The pre-fill reads the whole window from the origin.
    let mut before = s.usage(node, &inst).unwrap();
    s.net.wait_until(Duration::from_secs(120), || {
        before = s.usage(node, &inst).unwrap();
        before.cache_bytes >= 71_000_000
    });
    std::thread::sleep(Duration::from_secs(2));
    let before = s.usage(node, &inst).unwrap();
    let t = Instant::now();
    let after = drain_and_wait(&s, node, &placed);
    let total_ms = t.elapsed().as_secs_f64() * 1000.0;
    let (_, to, new) = after.iter().find(|p| p.0 == svc).unwrap().clone();
    std::thread::sleep(Duration::from_secs(3));
    let u = s.usage(to, &new).unwrap();
    let log = s.log(to as usize);
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("restored over the network") && l.contains(new.as_str()))
        .unwrap_or_else(|| panic!("{new} did not restore over TCP"))
        .to_string();
    let field = |k: &str| -> f64 {
        line.split(&format!("{k}="))
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|b| b.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let (bytes, restore_ms) = (field("bytes"), field("ms"));
    let _ = stop.send(());
    let reports = viewers.join().unwrap();
    let (resumes, pause_p50, pause_p99, pause_max) = relay_pauses(&s);
    println!(
        "{}",
        serde_json::json!({
            "viewers": reports.len(),
            "cache_bytes_before": before.cache_bytes,
            "cache_bytes_restored": bytes,
            "restore_ms": restore_ms,
            "copy_bytes_per_s": bytes / (restore_ms / 1000.0),
            "drain_total_ms": total_ms,
            "relay_resumes": resumes,
            "pause_p50_ms_at_most": pause_p50,
            "pause_p99_ms_at_most": pause_p99,
            "pause_max_ms": pause_max,
            "reconnects": reports.iter().map(|(_, r)| r.reconnects as u64).sum::<u64>(),
            "stalls": reports.iter().map(|(_, r)| r.stalls as u64).sum::<u64>(),
            "corrupt": reports.iter().map(|(_, r)| r.integrity_errors).sum::<u64>(),
            "source_origin_streams": before.origin_streams,
            "target_origin_streams": u.origin_streams,
            "target_origin_refetched_bytes": u.origin_refetched_bytes,
        })
    );
    // Nothing the pre-copy brought is fetched from the origin again.
    assert_eq!(u.origin_refetched_bytes, 0, "{u:?}");
    assert!(
        bytes >= before.cache_bytes as f64,
        "restored {bytes} of {}",
        before.cache_bytes
    );
    // The figure is only worth quoting if every viewer moved and played throughout.
    assert_eq!(reports.len(), 100);
    for (video, r) in &reports {
        assert_eq!(r.integrity_errors, 0, "{video}: {r:?}");
        assert!(r.http_error.is_none(), "{video}: {r:?}");
        assert_eq!(r.stalls, 0, "{video}: {r:?}");
        assert_eq!(r.reconnects, 0, "{video}: the relay hid the move {r:?}");
    }
    assert!(
        resumes >= 100,
        "{resumes} relay resumes for 100 moved viewers"
    );
}

// ---- Two front-ends, one address ------------------------------------------------------------

/// The address the front-end pair shares.
const VIP: &str = "10.77.0.50";
/// The real video's length: the players play it to the end.
const PAIR_SECS: u64 = 24;

/// One ffmpeg player in the client namespace, decoding in real time (`-re`) to nowhere and
/// reporting its media time every 250 ms.
struct Player {
    what: String,
    child: Child,
    /// (wall s since start, media s) samples.
    samples: std::sync::Arc<std::sync::Mutex<Vec<(f64, f64)>>>,
    /// The last progress block ffmpeg printed (for a failure's message).
    last: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
    reader: std::thread::JoinHandle<()>,
    stderr: std::thread::JoinHandle<String>,
}

impl Player {
    fn start(ns: &str, ffmpeg: &std::path::Path, input: &[&str], url: &str, what: &str) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(ffmpeg)
            .args(["-hide_banner", "-nostdin", "-v", "error", "-re"])
            .args(input)
            .args(["-i", url, "-f", "null", "-", "-progress", "pipe:1"])
            .args(["-stats_period", "0.25"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let last = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let out = child.stdout.take().unwrap();
        let reader = {
            let (samples, last) = (samples.clone(), last.clone());
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    {
                        let mut l = last.lock().unwrap();
                        if l.len() >= 14 {
                            l.pop_front();
                        }
                        l.push_back(line.clone());
                    }
                    if let Some(us) = line
                        .strip_prefix("out_time_us=")
                        .and_then(|v| v.trim().parse::<i64>().ok())
                    {
                        samples
                            .lock()
                            .unwrap()
                            .push((t0.elapsed().as_secs_f64(), us as f64 / 1e6));
                    }
                }
            })
        };
        let err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(err), &mut s);
            s
        });
        Player {
            what: what.to_string(),
            child,
            samples,
            last,
            reader,
            stderr,
        }
    }

    fn media(&self) -> f64 {
        self.samples.lock().unwrap().last().map_or(0.0, |s| s.1)
    }

    /// Waits for the end (killed at `deadline`): (exited well, stderr, media played, worst
    /// lag of media behind wall time from the first played sample), s.
    fn finish(mut self, deadline: Instant) -> (bool, String, f64, f64) {
        let ok = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st.success();
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let _ = self.reader.join();
        let err = self.stderr.join().unwrap_or_default();
        let samples = self.samples.lock().unwrap().clone();
        let lag = smart_testkit::worst_lag(samples.iter().copied());
        (ok, err, samples.last().map_or(0.0, |s| s.1), lag)
    }
}

/// keepalived in namespace `ns` (front-end `i`, files in `dir`) with `priority`, from the
/// deployment kit's configuration and check (deploy/frontend-pair), edited as
/// docs/operations.md says.
fn start_keepalived(
    ns: &str,
    dir: &std::path::Path,
    keepalived: &std::path::Path,
    i: usize,
    priority: u32,
) -> Child {
    let kit = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/frontend-pair");
    let conf = std::fs::read_to_string(format!("{kit}/keepalived.conf"))
        .unwrap()
        .replace("PRIORITY", &priority.to_string())
        .replace("INTERFACE", "eth0")
        .replace("VIRTUAL_IP/PREFIX", &format!("{VIP}/24"))
        .replace(
            "/usr/local/lib/smart/check-frontend",
            &format!("{kit}/check-frontend"),
        )
        .replace(
            "router_id smart_frontend",
            &format!("router_id smart_fe{i}"),
        );
    let path = dir.join(format!("keepalived-{i}.conf"));
    std::fs::write(&path, conf).unwrap();
    let pid = |k: &str| dir.join(format!("keepalived-{i}-{k}.pid"));
    let log = std::fs::File::create(dir.join(format!("keepalived-{i}.log"))).unwrap();
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(keepalived)
        .args(["--dont-fork", "--log-console", "--vrrp", "--use-file"])
        .arg(&path)
        .arg("--pid")
        .arg(pid("main"))
        .arg("--vrrp_pid")
        .arg(pid("vrrp"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Waits until namespace `ns` holds the shared address (bounded by `within`; the logs of
/// keepalived `kept` in `dir` in the failure).
fn wait_for_vip(ns: &str, dir: &std::path::Path, kept: &[usize], within: Duration) {
    let t = Instant::now();
    let holds = || {
        sh(&["ip", "-n", ns, "-4", "addr", "show", "dev", "eth0"])
            .is_ok_and(|a| a.contains(&format!("{VIP}/")))
    };
    while !holds() {
        if t.elapsed() >= within {
            let logs: String = kept
                .iter()
                .map(|k| {
                    let t = std::fs::read_to_string(dir.join(format!("keepalived-{k}.log")))
                        .unwrap_or_default();
                    format!("--- keepalived {k}\n{t}")
                })
                .collect();
            panic!("{ns} did not take {VIP} within {within:?}\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// keepalived, ffmpeg and a browser, or `None` (the test skips, or fails under
/// `SMART_REQUIRE_TOOLS=1`).
fn pair_tools() -> Option<(PathBuf, PathBuf, smart_vod::browser::Tools)> {
    let keepalived = smart_vod::tools::require_bin("keepalived")?;
    let ffmpeg = smart_vod::tools::require_bin("ffmpeg")?;
    let found = smart_vod::browser::Browser::find().map_err(|e| e.to_string());
    let hint = found.as_ref().err().cloned().unwrap_or_default();
    let tools = smart_vod::tools::require("a browser", found.ok(), &hint)?;
    Some((keepalived, ffmpeg, tools))
}

/// The player page's state with its video's `currentTime` (the page's contract:
/// vod/src/player.rs).
const PAGE_STATE: &str =
    "({...window.smartPlayer, currentTime: document.getElementById('video').currentTime})";

/// Two front-ends share [`VIP`] with keepalived as the deployment kit configures it
/// (docs/operations.md, "Two front-ends, one address"). Headless Chromium on the player
/// page (6-s buffer goal), twenty ffmpeg players (relayed progressive, with ffmpeg's
/// reconnect options, and HLS) and ten byte-checking viewers play through the address;
/// the machine holding it dies (kill -9 of its node and its keepalived) in the middle of
/// the page's, the viewers' and (at least 15 of 20) players' video; the other takes the address and every player plays the
/// video to its end (media lag ≤ 7 s), the browser's video stands still at most 3 s with
/// no error, every viewer reconnects through the other front-end and its bytes check.
#[test]
fn a_front_end_pair_keeps_players_playing_through_the_death_of_the_active_one() {
    if !can_run(false) {
        return;
    }
    let Some((keepalived, ffmpeg, browser_tools)) = pair_tools() else {
        return;
    };
    let video =
        smart_bench::videos::real_video(&ffmpeg, Duration::from_secs(PAIR_SECS), KBPS).unwrap();
    let mut s = services_net_on(5, "available", "", KBPS * 1000, "", "", 2);
    let all: Vec<usize> = (1..=5).collect();
    s.net.wait_agree(&all, Duration::from_secs(30), |_| true);
    let mut daemons = [
        start_keepalived(&s.net.ns(4), &s.net.dir, &keepalived, 4, 150),
        start_keepalived(&s.net.ns(5), &s.net.dir, &keepalived, 5, 100),
    ];
    wait_for_vip(&s.net.ns(4), &s.net.dir, &[4, 5], Duration::from_secs(20));
    // The kit's check passes on both (each front-end serves and knows the Control).
    for i in [4, 5] {
        let check = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/frontend-pair/check-frontend"
        );
        sh(&["ip", "netns", "exec", &s.net.ns(i), check])
            .unwrap_or_else(|e| panic!("check-frontend on h{i}: {e}"));
    }
    // The origin with the real video, in the client namespace.
    let (stop_origin, origin_rx) = std::sync::mpsc::channel::<()>();
    let origin = in_client(s.net.client_ns(), move || async move {
        let mut o = smart_vod::origin::Origin::new();
        o.add("v0", video);
        let l = tokio::net::TcpListener::bind(format!("{CLIENT_IP}:8000"))
            .await
            .unwrap();
        tokio::spawn(std::sync::Arc::new(o).serve(l));
        let _ = tokio::task::spawn_blocking(move || origin_rx.recv()).await;
    });
    let base = format!("http://{VIP}:7102/watch/v0");
    let reconnect = [
        "-reconnect",
        "1",
        "-reconnect_streamed",
        "1",
        "-reconnect_on_network_error",
        "1",
        "-reconnect_delay_max",
        "2",
    ];
    let client = s.net.client_ns();
    // The progressive players first: ffmpeg probes a paced progressive stream for several
    // seconds before it plays. The others join once they play, so that the machine dies
    // in the middle of everyone's video.
    let mut players = Vec::new();
    let start_players = |players: &mut Vec<Player>, hls: bool| {
        for k in (hls as usize..20).step_by(2) {
            let (url, what) = if hls {
                (format!("{base}.m3u8"), format!("HLS player {k}"))
            } else {
                (base.clone(), format!("progressive player {k}"))
            };
            players.push(Player::start(&client, &ffmpeg, &reconnect, &url, &what));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    start_players(&mut players, false);
    let t = Instant::now();
    while players.iter().any(|p| p.media() < 1.0) {
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "progressive players did not start: {:?}\n{}",
            players.iter().map(Player::media).collect::<Vec<_>>(),
            s.net.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    start_players(&mut players, true);
    // Byte-checking viewers through the same address.
    let (stop_viewers, viewers_rx) = std::sync::mpsc::channel::<()>();
    let progress: Vec<std::sync::Arc<smart_vod::viewer::Progress>> =
        (0..10).map(|_| Default::default()).collect();
    let viewers = {
        let progress = progress.clone();
        let url = smart_vod::http::Url::parse(&base).unwrap();
        in_client(client.clone(), move || async move {
            let (tx, rx) = tokio::sync::watch::channel(false);
            let shared = std::sync::Arc::new(smart_vod::viewer::Shared::default());
            let handles: Vec<_> = progress
                .into_iter()
                .map(|p| {
                    let cfg = smart_vod::viewer::ViewerConfig {
                        url: url.clone(),
                        frontend: Some(url.clone()),
                        bitrate_bps: KBPS * 1000,
                        prefetch_bytes: 0,
                        start_buffer: Duration::from_millis(500),
                        start_offset: 0,
                    };
                    let (shared, rx) = (shared.clone(), rx.clone());
                    tokio::spawn(async move {
                        smart_vod::viewer::run_viewer_watched(&cfg, &shared, &p, rx).await
                    })
                })
                .collect();
            let _ = tokio::task::spawn_blocking(move || viewers_rx.recv()).await;
            let _ = tx.send(true);
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.unwrap());
            }
            out
        })
    };
    // Headless Chromium on the front-end's player page, through the shared address: its
    // `currentTime` every 250 ms until told to stop.
    let (stop_browser, browser_rx) = std::sync::mpsc::channel::<()>();
    let browser_playing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Its `currentTime`, ms.
    let browser_time = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let browser = {
        let (tools, playing, time) = (
            browser_tools.clone(),
            browser_playing.clone(),
            browser_time.clone(),
        );
        in_client(client.clone(), move || async move {
            let mut br = smart_vod::browser::Browser::launch(&tools).await.unwrap();
            // A 6-s buffer goal: the page keeps fetching through whichever front-end holds
            // the address, instead of holding the whole short video early.
            br.goto(&format!("http://{VIP}:7102/play/v0?buffer=6"))
                .await
                .unwrap();
            let t0 = Instant::now();
            let mut samples: Vec<(f64, f64)> = Vec::new();
            let mut state = serde_json::Value::Null;
            while browser_rx.try_recv().is_err() {
                state = br.eval(PAGE_STATE).await.unwrap_or(serde_json::Value::Null);
                let ct = state["currentTime"].as_f64().unwrap_or(0.0);
                samples.push((t0.elapsed().as_secs_f64(), ct));
                time.store((ct * 1000.0) as u64, std::sync::atomic::Ordering::Relaxed);
                if ct > 2.0 {
                    playing.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            br.close().await;
            (samples, state)
        })
    };
    // Everyone plays a while through h4.
    let t = Instant::now();
    while players.iter().any(|p| p.media() < 6.0)
        || !browser_playing.load(std::sync::atomic::Ordering::Relaxed)
    {
        if t.elapsed() >= Duration::from_secs(40) {
            let media: Vec<f64> = players.iter().map(Player::media).collect();
            let sockets = sh(&["ip", "netns", "exec", &client, "ss", "-tnpi"]).unwrap_or_default();
            let fe_counters: Vec<serde_json::Value> = s
                .net
                .status(4)
                .and_then(|st| st["counters"].as_array().cloned())
                .unwrap_or_default()
                .into_iter()
                .filter(|kv| kv[0].as_str().is_some_and(|k| k.starts_with("frontend")))
                .collect();
            eprintln!("front-end counters: {fe_counters:?}");
            let stuck_pids: Vec<u32> = players
                .iter()
                .filter(|p| p.media() < 6.0)
                .map(|p| p.child.id())
                .collect();
            let stuck: Vec<String> = players
                .into_iter()
                .filter(|p| p.media() < 6.0)
                .map(|p| {
                    let what = p.what.clone();
                    let progress: Vec<String> = p.last.lock().unwrap().iter().cloned().collect();
                    let (_, err, media, _) = p.finish(Instant::now());
                    format!("{what} at {media:.1} s: {err}; last progress: {progress:?}")
                })
                .collect();
            panic!(
                "players did not start: {media:?} (stuck: pids {stuck_pids:?}), the browser {}\n{}\nclient sockets:\n{sockets}\n{}",
                if browser_playing.load(std::sync::atomic::Ordering::Relaxed) {
                    "plays"
                } else {
                    "does not play"
                },
                stuck.join("\n"),
                s.net.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The machine holding the address dies.
    let media_at_kill: Vec<f64> = players.iter().map(Player::media).collect();
    // Viewer connections each front-end holds at that moment.
    let held = |i: usize| {
        sh(&[
            "ip",
            "netns",
            "exec",
            &s.net.ns(i),
            "ss",
            "-Htn",
            "state",
            "established",
            "( sport = :7102 )",
        ])
        .map(|o| o.lines().count())
        .unwrap_or(0)
    };
    let held_at_kill = (held(4), held(5));
    let browser_at_kill = browser_time.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0;
    kill_namespace(&s.net.ns(4));
    let killed = Instant::now();
    for d in &mut daemons[..1] {
        let _ = d.wait();
    }
    if let Some(mut c) = s.net.procs[3].take() {
        let _ = c.wait();
    }
    wait_for_vip(&s.net.ns(5), &s.net.dir, &[4, 5], Duration::from_secs(10));
    let takeover_ms = killed.elapsed().as_millis();
    let deadline = Instant::now() + Duration::from_secs(PAIR_SECS + 30);
    let mut results = Vec::new();
    for p in players {
        let what = p.what.clone();
        results.push((what, p.finish(deadline)));
    }
    let _ = stop_viewers.send(());
    let reports = viewers.join().unwrap();
    let _ = stop_browser.send(());
    let (samples, page) = browser.join().unwrap();
    let _ = stop_origin.send(());
    let _ = origin.join();
    let _ = daemons[1].kill();
    let _ = daemons[1].wait();
    let lags: Vec<f64> = results.iter().map(|(_, r)| r.3).collect();
    // The browser's longest stall after it started: wall time in which `currentTime` did
    // not advance, up to the end of the video.
    let started = samples.iter().position(|s| s.1 > 2.0).unwrap_or(0);
    let mut browser_stall: f64 = 0.0;
    let mut still_since = samples[started];
    for &(t, ct) in &samples[started..] {
        if ct > still_since.1 || ct >= PAIR_SECS as f64 - 1.0 {
            still_since = (t, ct);
        }
        browser_stall = browser_stall.max(t - still_since.0);
    }
    println!(
        "{}",
        serde_json::json!({
            "takeover_ms": takeover_ms as u64,
            "players": results.len(),
            "worst_lag_s_p50": p50(lags.clone()),
            "worst_lag_s_max": lags.iter().copied().fold(0.0, f64::max),
            "viewer_reconnects": reports.iter().map(|r| r.reconnects as u64).sum::<u64>(),
            "viewer_bytes_min": reports.iter().map(|r| r.bytes).min(),
            "player_media_at_kill_s": media_at_kill,
            "connections_at_kill_h4_h5": held_at_kill,
            "browser_at_kill_s": browser_at_kill,
            "viewer_longest_gap_ms": reports.iter().flat_map(|r| r.gaps_ms.iter().copied()).fold(0.0, f64::max),
            "browser_stall_s": browser_stall,
            "browser_played_s": samples.last().map_or(0.0, |s| s.1),
        })
    );
    assert!(
        browser_stall <= 3.0,
        "the browser stood still {browser_stall:.2} s: {samples:?}\n{page}"
    );
    assert_eq!(
        page["errors"].as_array().map(Vec::len),
        Some(0),
        "video errors on the page: {page}"
    );
    for (what, (ok, err, media, lag)) in &results {
        assert!(*ok, "{what}: ffmpeg failed: {err}");
        assert!(
            *media >= PAIR_SECS as f64 - 0.5,
            "{what}: played {media:.1} s of {PAIR_SECS}: {err}"
        );
        assert!(
            *lag <= 7.0,
            "{what}: media fell {lag:.2} s behind wall time"
        );
    }
    for r in &reports {
        assert_eq!(r.integrity_errors, 0, "{r:?}");
        assert!(r.http_error.is_none(), "{r:?}");
        // Its connection went with the machine: it came back through the other one.
        assert!(r.reconnects >= 1, "the viewer never saw the death: {r:?}");
    }
    // The death came in the middle of the players' video (an HLS player fetches up to 10 s
    // ahead and then 1.5× real time: at 14 s it still has segments to fetch). A player
    // whose ffmpeg got its whole input early is not carried by the takeover; most must be.
    let done_early: Vec<(&String, f64)> = results
        .iter()
        .zip(&media_at_kill)
        .filter(|(_, m)| **m > PAIR_SECS as f64 - 10.0)
        .map(|((what, _), m)| (what, *m))
        .collect();
    assert!(
        done_early.len() <= 5,
        "players past {} s of {PAIR_SECS} when the machine died: {done_early:?}",
        PAIR_SECS - 10
    );
    assert!(
        browser_at_kill <= PAIR_SECS as f64 - 8.0,
        "the page was at {browser_at_kill:.1} s of {PAIR_SECS} when the machine died"
    );
}

// ---- Faults with services: the nemesis ------------------------------------------------------
//
// Five hosts (four agents that may lead, the fifth the front-end), four distributor services
// admitted by an operator (`smart admit` against the front-end host's API, with the spec the
// front-end itself would build, so that its viewers attach to them) before any viewer asks,
// and two byte-checking viewers per service in the client namespace that reconnect through
// the front-end as players do. Operator admissions are kept in the desired-state log, which
// is what round 7 tests; admission by a viewer's first request is covered by tests/e2e.rs and
// tests/players.rs (and by this file's migration tests). Seven
// faults, one per round, each followed by a bounded wait for the cluster to settle: exactly
// one running instance of every service (the processes in the hosts' namespaces, each named
// by the control socket its agent gave it, not what any node says), the Control's listing
// naming that instance, and one Control that every running host agrees on and that alone
// acts. Then a watch: no service lost or doubled and every viewer receiving bytes. In
// majority mode a host cut off alone must start nothing while cut off. Rounds that fail are
// collected and reported together with the figures.

const NEM_HOSTS: usize = 5;
const NEM_SERVICES: usize = 4;
const NEM_VIEWERS_PER_SERVICE: usize = 2;
/// The origin's videos: bitrate (bits/s) and duration (ms). The operator's admissions carry
/// the same, as the front-end's would (it reads them from the origin).
const NEM_VIDEO: (u64, u64) = (KBPS * 1000, 600_000);
/// The failure detector's dead time in these clusters: five nodes, four distributors and
/// the viewers share two cores, and a node starved for half a second must not be declared
/// dead between faults.
const NEM_DEAD_AFTER: Duration = Duration::from_millis(1500);
/// How long a partition or a SIGSTOP lasts: well past the dead time.
const NEM_CUT: Duration = Duration::from_millis(4000);
/// The bound on settling after a fault.
const NEM_SETTLE: Duration = Duration::from_secs(30);
/// After settling: how long the cluster and the viewers are watched, and the longest a
/// viewer may go without a byte in that time before it counts as stalled.
const NEM_WATCH: Duration = Duration::from_secs(6);
const NEM_STALL: Duration = Duration::from_secs(4);
/// How long after a whole-cluster restart (its new Control acting) the services are given
/// to come back with no viewer asking for them.
const NEM_RESTART_WINDOW: Duration = Duration::from_secs(12);
/// Whether admitted services come back after a whole-cluster stop by themselves: round 7
/// requires every service back with no viewer asking. It holds because an operator's
/// admission is written to the desired-state log (crate `desired`) before the Control acts
/// on it, the log is on every control node's disk, and a new Control restores from it every
/// admitted service that no agent runs (docs/DESIGN.md). The nemesis's services are admitted
/// by an operator for this reason: one admitted by a viewer's request is not kept there.
const SERVICES_SURVIVE_CLUSTER_RESTART: bool = true;

/// What one look at the cluster found.
#[derive(Debug, Default)]
struct Snapshot {
    /// Running instance processes by service: `(host, instance)`.
    running: std::collections::BTreeMap<String, Vec<(usize, String)>>,
    /// The Control each running host sees.
    views: Vec<(usize, Option<(u64, u64)>)>,
    /// Running hosts whose Control acts (`control_acting` = 1).
    acting: Vec<usize>,
    /// The Control's listing, `(service, node, instance)` (empty when it did not answer).
    listed: Vec<(String, u64, String)>,
}

impl Snapshot {
    fn count(&self, svc: &str) -> usize {
        self.running.get(svc).map_or(0, Vec::len)
    }

    fn lost(&self, services: &[String]) -> Vec<String> {
        services
            .iter()
            .filter(|s| self.count(s) == 0)
            .cloned()
            .collect()
    }

    fn duplicated(&self) -> Vec<(String, Vec<(usize, String)>)> {
        self.running
            .iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(s, v)| (s.clone(), v.clone()))
            .collect()
    }

    /// The one Control: every running host sees it, and it alone acts.
    fn control(&self) -> Option<u64> {
        let first = self.views.first()?.1?;
        let agreed = self.views.iter().all(|(_, v)| *v == Some(first));
        (agreed && self.acting == [first.0 as usize]).then_some(first.0)
    }

    /// Settled: one Control, exactly one instance of each service (none on `avoid`), and
    /// the Control lists each service at that instance.
    fn settled(&self, services: &[String], avoid: Option<usize>) -> bool {
        self.control().is_some()
            && services.iter().all(|svc| {
                let Some([(host, inst)]) = self.running.get(svc).map(Vec::as_slice) else {
                    return false;
                };
                Some(*host) != avoid
                    && self
                        .listed
                        .iter()
                        .filter(|(s, _, _)| s == svc)
                        .map(|(_, n, i)| (*n as usize, i))
                        .eq([(*host, inst)])
            })
    }
}

/// One round's figures.
#[derive(Debug, serde::Serialize)]
struct Round {
    mode: &'static str,
    round: usize,
    fault: String,
    /// From the fault's last act (kill, heal, SIGCONT, drain request, SIGTERM; round 7: the
    /// viewers' return after the restart) to settled; `None`: not within [`NEM_SETTLE`] of
    /// the check's start.
    settle_ms: Option<u64>,
    /// Services whose settled instance is not the one that ran before the fault.
    replaced: usize,
    /// Services seen running twice or more between the fault and settling.
    duplicates_before_settle: usize,
    lost: usize,
    duplicates_after_settle: usize,
    corrupt: u64,
    stalled_viewers: usize,
    longest_silence_after_settle_ms: u64,
}

struct Viewers {
    stop: std::sync::mpsc::Sender<()>,
    handle: std::thread::JoinHandle<Vec<(String, smart_vod::viewer::ViewerReport)>>,
    progress: Vec<std::sync::Arc<smart_vod::viewer::Progress>>,
}

struct Nemesis {
    s: Services,
    mode: &'static str,
    services: Vec<String>,
    /// Whether host `i`'s node runs (index `i - 1`).
    up: Vec<bool>,
    origin: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
    viewers: Option<Viewers>,
    /// Reports of viewer sets already stopped.
    reports: Vec<(String, smart_vod::viewer::ViewerReport)>,
    /// Integrity errors of viewer sets already stopped.
    corrupt_before: u64,
    rounds: Vec<Round>,
    failures: Vec<String>,
}

impl Nemesis {
    fn start(mode: &'static str) -> Nemesis {
        let tables = format!(
            "\n[timing]\ndead_after = \"{}ms\"\n",
            NEM_DEAD_AFTER.as_millis()
        );
        // All viewers come from the client namespace's one address, where a real audience
        // has many: the front-end's per-address rate of new services must not refuse them
        // (a refused viewer gives up) when their services are started again after a fault.
        let frontend = "new_services_per_sec = 1000.0\nnew_services_burst = 1000\n";
        let s = services_net_on(NEM_HOSTS, mode, "", KBPS * 1000, frontend, &tables, 1);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let params = NEM_VIDEO;
        let origin = in_client(s.net.client_ns(), move || async move {
            serve_origin(NEM_SERVICES, params).await;
            let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
        });
        let mut n = Nemesis {
            s,
            mode,
            services: (0..NEM_SERVICES).map(|v| format!("video-v{v}")).collect(),
            up: vec![true; NEM_HOSTS],
            origin: Some((tx, origin)),
            viewers: None,
            reports: Vec::new(),
            corrupt_before: 0,
            rounds: Vec::new(),
            failures: Vec::new(),
        };
        n.admit_services();
        let t = Instant::now();
        let (settled, snap, _) = n.settle(None);
        assert!(
            settled.is_some(),
            "{mode}: the admitted services did not start within {NEM_SETTLE:?}: {snap:?}\n{}",
            n.s.net.logs()
        );
        println!(
            "{mode}: {} services running {} ms after their admission, before any viewer",
            NEM_SERVICES,
            t.elapsed().as_millis()
        );
        n.start_viewers();
        n.wait_playing();
        n
    }

    /// Admits every service as an operator would: `smart admit` against the front-end
    /// host's API, with the spec the front-end builds for a viewer of that video (its
    /// `[frontend]` template, the origin's bitrate and duration), so that the viewers the
    /// front-end sends there attach to these services instead of admitting new ones.
    fn admit_services(&self) {
        let mode = self.mode;
        let cfg_file = self.s.net.dir.join(format!("n{}.toml", self.s.fe));
        let cfg = smart_config::NodeConfig::load(&cfg_file)
            .unwrap_or_else(|e| panic!("{}: {e}", cfg_file.display()));
        // An admission needs an acting Control: wait for one first.
        let t = Instant::now();
        let mut snap = self.snapshot();
        while snap.control().is_none() {
            assert!(
                t.elapsed() < NEM_SETTLE,
                "{mode}: no single acting Control to admit to within {NEM_SETTLE:?}: {snap:?}\n{}",
                self.s.net.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
            snap = self.snapshot();
        }
        let (bitrate_bps, duration_ms) = NEM_VIDEO;
        for v in 0..NEM_SERVICES {
            let spec = smart_frontend::spec_for(
                &cfg.frontend,
                &format!("v{v}"),
                bitrate_bps,
                Some(duration_ms),
            );
            assert_eq!(spec.name, self.services[v]);
            // Every field of the spec, as `smart admit` takes it.
            let bps = spec.per_client_bps.map(|b| b.to_string());
            let dur = spec.duration_ms.map(|d| d.to_string());
            let mut args = vec!["admit", &spec.name, "--class", &spec.class];
            if let Some(b) = &bps {
                args.extend(["--per-client-bps", b.as_str()]);
            }
            if let Some(d) = &dur {
                args.extend(["--duration-ms", d.as_str()]);
            }
            let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            for kv in &env {
                args.extend(["--env", kv.as_str()]);
            }
            // The Control just elected may still be rebuilding its registry: such an answer
            // decided nothing, and only it is asked again.
            let placed = loop {
                match self.s.cli_then(&args, &spec.command) {
                    Err(e)
                        if (e.contains("(rebuilding") || e.contains("(no_control"))
                            && t.elapsed() < NEM_SETTLE =>
                    {
                        std::thread::sleep(Duration::from_millis(200))
                    }
                    r => break r,
                }
            };
            let placed = placed.unwrap_or_else(|e| {
                panic!(
                    "{mode}: admission of {} refused: {e}\n{}",
                    spec.name,
                    self.s.net.logs()
                )
            });
            assert_eq!(placed["service"], spec.name.as_str(), "{placed}");
        }
    }

    /// Waits until every viewer has received a byte: the faults start on a playing
    /// audience.
    fn wait_playing(&self) {
        let t = Instant::now();
        let progress = self.viewers.as_ref().map_or(&[][..], |v| &v.progress[..]);
        while progress.iter().any(|p| p.last_byte().is_none()) {
            assert!(
                t.elapsed() < NEM_SETTLE,
                "{}: {} of {} viewers got no byte within {NEM_SETTLE:?}\n{}",
                self.mode,
                progress.iter().filter(|p| p.last_byte().is_none()).count(),
                progress.len(),
                self.s.net.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        println!(
            "{}: every viewer playing {} ms after the viewers started",
            self.mode,
            t.elapsed().as_millis()
        );
    }

    fn start_viewers(&mut self) {
        let progress: Vec<std::sync::Arc<smart_vod::viewer::Progress>> = (0..NEM_SERVICES
            * NEM_VIEWERS_PER_SERVICE)
            .map(|_| Default::default())
            .collect();
        let (stop, rx) = std::sync::mpsc::channel();
        let (fe, p) = (self.s.fe, progress.clone());
        let handle = in_client(self.s.net.client_ns(), move || {
            play(fe, NEM_SERVICES, KBPS * 1000, p, rx)
        });
        self.viewers = Some(Viewers {
            stop,
            handle,
            progress,
        });
    }

    fn stop_viewers(&mut self) {
        if let Some(v) = self.viewers.take() {
            self.corrupt_before += v.progress.iter().map(|p| p.integrity_errors()).sum::<u64>();
            let _ = v.stop.send(());
            self.reports.extend(v.handle.join().unwrap());
        }
    }

    fn corrupt(&self) -> u64 {
        self.corrupt_before
            + self.viewers.as_ref().map_or(0, |v| {
                v.progress.iter().map(|p| p.integrity_errors()).sum::<u64>()
            })
    }

    /// The instance processes of every host, from the processes themselves
    /// ([`smart_bench::cluster::running_instances`]).
    fn running(&self) -> std::collections::BTreeMap<String, Vec<(usize, String)>> {
        let mut out: std::collections::BTreeMap<String, Vec<(usize, String)>> = Default::default();
        for (svc, node, inst) in smart_bench::cluster::running_instances(&self.s.net.dir) {
            out.entry(svc).or_default().push((node as usize, inst));
        }
        out
    }

    fn snapshot(&self) -> Snapshot {
        let hosts: Vec<usize> = (1..=NEM_HOSTS).filter(|&i| self.up[i - 1]).collect();
        let net = &self.s.net;
        let statuses: Vec<(usize, Option<serde_json::Value>)> = std::thread::scope(|sc| {
            let hs: Vec<_> = hosts
                .iter()
                .map(|&i| sc.spawn(move || (i, net.status(i))))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut snap = Snapshot {
            running: self.running(),
            listed: self.s.placed(),
            ..Default::default()
        };
        for (i, st) in statuses {
            let view = st.as_ref().and_then(|s| {
                Some((
                    s["control"]["node_id"].as_u64()?,
                    s["control"]["epoch"].as_u64()?,
                ))
            });
            let acting = st.as_ref().and_then(|s| {
                s["counters"]
                    .as_array()?
                    .iter()
                    .find(|kv| kv[0] == "control_acting")?[1]
                    .as_u64()
            });
            snap.views.push((i, view));
            if acting == Some(1) {
                snap.acting.push(i);
            }
        }
        snap
    }

    /// Polls until settled (see [`Snapshot::settled`]) or [`NEM_SETTLE`]; returns the
    /// time it took, the last look, and the services seen running twice or more on the
    /// way (the faults that leave a stale copy must show one here before it is stopped).
    fn settle(&self, avoid: Option<usize>) -> (Option<Duration>, Snapshot, usize) {
        let t = Instant::now();
        let mut doubled = std::collections::BTreeSet::new();
        loop {
            let snap = self.snapshot();
            doubled.extend(snap.duplicated().into_iter().map(|(s, _)| s));
            if snap.settled(&self.services, avoid) {
                return (Some(t.elapsed()), snap, doubled.len());
            }
            if t.elapsed() >= NEM_SETTLE {
                return (None, snap, doubled.len());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// After settling at `since`: watches the instances and the viewers for
    /// [`NEM_WATCH`]; returns (services seen doubled, services seen lost, stalled viewers,
    /// longest silence).
    fn watch(&self, since: Instant) -> (Vec<String>, Vec<String>, usize, Duration, String) {
        let mut doubled = std::collections::BTreeSet::new();
        let mut lost = std::collections::BTreeSet::new();
        let progress = self.viewers.as_ref().map_or(&[][..], |v| &v.progress[..]);
        let mut silence = vec![Duration::ZERO; progress.len()];
        let requests0: Vec<u64> = progress.iter().map(|p| p.requests()).collect();
        // What the sockets looked like when a viewer first went quiet for half the
        // allowed stall: the evidence of a failure, printed with it.
        let mut sockets = None;
        while since.elapsed() < NEM_WATCH {
            let running = self.running();
            for svc in &self.services {
                match running.get(svc).map_or(0, Vec::len) {
                    0 => lost.insert(svc.clone()),
                    1 => false,
                    _ => doubled.insert(format!("{svc} {:?}", running[svc])),
                };
            }
            let now = Instant::now();
            for (p, s) in progress.iter().zip(silence.iter_mut()) {
                let last = p.last_byte().map_or(since, |l| l.max(since));
                *s = (*s).max(now.saturating_duration_since(last));
            }
            if sockets.is_none() && silence.iter().any(|s| *s > NEM_STALL / 2) {
                sockets = Some(self.sockets());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let stalled = silence.iter().filter(|s| **s > NEM_STALL).count();
        let longest = silence.iter().copied().max().unwrap_or_default();
        let mut details = String::new();
        for (i, (p, s)) in progress.iter().zip(&silence).enumerate() {
            if *s > NEM_STALL {
                details += &format!(
                    "viewer {i} of v{}: silent {s:?}, {} requests during the watch, last asked {}\n",
                    i % NEM_SERVICES,
                    p.requests() - requests0[i],
                    p.url()
                );
            }
        }
        if stalled > 0 {
            details += &sockets.unwrap_or_default();
        }
        (
            doubled.into_iter().collect(),
            lost.into_iter().collect(),
            stalled,
            longest,
            details,
        )
    }

    /// `ss -tnoi` of the viewers' namespace and of every host's: where each viewer is
    /// connected, and the senders' retransmission timers.
    fn sockets(&self) -> String {
        let mut out = String::new();
        let mut nss = vec![("viewers".to_string(), self.s.net.client_ns())];
        nss.extend((1..=NEM_HOSTS).map(|i| (format!("n{i}"), self.s.net.ns(i))));
        for (name, ns) in nss {
            let ss = sh(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "ss",
                "-tnoi",
                "state",
                "established",
            ])
            .unwrap_or_else(|e| e);
            out += &format!("--- sockets of {name}\n{ss}\n");
        }
        out
    }

    /// Settles after a fault (none on `avoid`), watches, records the round and its
    /// failures. `before`: the look before the fault (the viewers' integrity errors and
    /// the instances), `at`: the fault's last act.
    fn finish_round(
        &mut self,
        round: usize,
        fault: String,
        avoid: Option<usize>,
        (corrupt0, before): (u64, Snapshot),
        at: Instant,
    ) {
        let (settled, snap, doubled_before) = self.settle(avoid);
        let settled = settled.map(|_| at.elapsed());
        let replaced = self
            .services
            .iter()
            .filter(|svc| snap.running.get(*svc) != before.running.get(*svc))
            .count();
        let tag = format!("{} round {round} ({fault})", self.mode);
        let (doubled, lost_after, stalled, longest, details) = match settled {
            Some(_) => self.watch(Instant::now()),
            None => {
                self.failures.push(format!(
                    "{tag}: not settled within {NEM_SETTLE:?}: lost {:?}, duplicated {:?}, control views {:?}, acting {:?}, listed {:?}",
                    snap.lost(&self.services),
                    snap.duplicated(),
                    snap.views,
                    snap.acting,
                    snap.listed
                ));
                (
                    vec![],
                    snap.lost(&self.services),
                    0,
                    Duration::ZERO,
                    String::new(),
                )
            }
        };
        let control_after = self.snapshot().control();
        if settled.is_some() && control_after.is_none() {
            self.failures
                .push(format!("{tag}: no single acting Control after the watch"));
        }
        if !doubled.is_empty() {
            self.failures
                .push(format!("{tag}: duplicates after settling: {doubled:?}"));
        }
        if !lost_after.is_empty() {
            self.failures
                .push(format!("{tag}: services not running: {lost_after:?}"));
        }
        if stalled > 0 {
            self.failures.push(format!(
                "{tag}: {stalled} viewers got no byte for more than {NEM_STALL:?} after settling (longest {longest:?})\n{details}"
            ));
        }
        let corrupt = self.corrupt() - corrupt0;
        if corrupt > 0 {
            self.failures
                .push(format!("{tag}: {corrupt} integrity errors at viewers"));
        }
        let r = Round {
            mode: self.mode,
            round,
            fault,
            settle_ms: settled.map(|d| d.as_millis() as u64),
            replaced,
            duplicates_before_settle: doubled_before,
            lost: lost_after.len(),
            duplicates_after_settle: doubled.len(),
            corrupt,
            stalled_viewers: stalled,
            longest_silence_after_settle_ms: longest.as_millis() as u64,
        };
        println!("{}", serde_json::to_string(&r).unwrap());
        self.rounds.push(r);
    }

    /// Brings back every stopped node and undrains `drained`, then requires the cluster
    /// settled: the next round starts from a whole cluster.
    fn recover(&mut self, round: usize, drained: Option<usize>) {
        for i in 1..=NEM_HOSTS {
            if !self.up[i - 1] {
                if let Some(mut c) = self.s.net.procs[i - 1].take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                let child = self.s.net.spawn(i);
                self.s.net.procs[i - 1] = Some(child);
                self.up[i - 1] = true;
            }
        }
        if let Some(d) = drained
            && let Err(e) = self.s.cli(&["undrain", &d.to_string()])
        {
            self.failures
                .push(format!("{} round {round}: undrain n{d}: {e}", self.mode));
        }
        // The restarted nodes must be heard and counted before the next fault.
        let (settled, snap, _) = self.settle(None);
        if settled.is_none() {
            panic!(
                "{} round {round}: the cluster did not recover: {snap:?}\nfailures so far: {:#?}\n{}",
                self.mode,
                self.failures,
                self.s.net.logs()
            );
        }
    }

    /// The acting Control, an agent host other than it running a service (the lowest), and
    /// the look before a fault (the viewers' integrity errors and the cluster).
    fn targets(&self) -> (usize, usize, (u64, Snapshot)) {
        let corrupt = self.corrupt();
        let snap = self.snapshot();
        let c = snap
            .control()
            .unwrap_or_else(|| panic!("{}: no single acting Control: {snap:?}", self.mode))
            as usize;
        let other = snap
            .running
            .values()
            .flatten()
            .map(|(h, _)| *h)
            .filter(|&h| h != c)
            .min()
            .unwrap_or_else(|| {
                panic!(
                    "{}: every service runs on the Control's host n{c}: {snap:?}",
                    self.mode
                )
            });
        (c, other, (corrupt, snap))
    }

    /// kill -9 of every process of host `i` (its node and instances: the machine dies).
    fn kill_host(&mut self, i: usize) {
        kill_namespace(&self.s.net.ns(i));
        if let Some(c) = self.s.net.procs[i - 1].as_mut() {
            let _ = c.wait();
        }
        self.up[i - 1] = false;
    }

    /// Sends `sig` to every process of host `i`.
    fn signal_host(&self, i: usize, sig: nix::sys::signal::Signal) {
        let pids = sh(&["ip", "netns", "pids", &self.s.net.ns(i)]).unwrap_or_default();
        for p in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
        }
    }

    /// SIGTERM to host `i`'s node; waits (10 s at most) for it to exit. Returns false if it
    /// had to be killed.
    fn term_node(&mut self, i: usize) -> bool {
        let Some(c) = self.s.net.procs[i - 1].as_mut() else {
            return true;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut clean = true;
        while !matches!(c.try_wait(), Ok(Some(_))) {
            if Instant::now() >= deadline {
                clean = false;
                let _ = c.kill();
                let _ = c.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.up[i - 1] = false;
        clean
    }

    fn run(mut self) {
        let mode = self.mode;
        // 1. kill -9 of a service host that is not the Control's.
        let (_, h, before) = self.targets();
        self.kill_host(h);
        let at = Instant::now();
        self.finish_round(1, format!("kill -9 of service host n{h}"), None, before, at);
        self.recover(1, None);

        // 2. kill -9 of the Control's host.
        let (c, _, before) = self.targets();
        self.kill_host(c);
        let at = Instant::now();
        let fault = format!("kill -9 of the Control's host n{c}");
        self.finish_round(2, fault, None, before, at);
        self.recover(2, None);

        // 3. A service host cut off past the dead time, then healed.
        let (_, h, before) = self.targets();
        let had: Vec<String> = before
            .1
            .running
            .values()
            .flatten()
            .filter(|(host, _)| *host == h)
            .map(|(_, i)| i.clone())
            .collect();
        self.s.net.unplug(h);
        // In majority mode the cut-off host is a minority of one: nothing may start there
        // until it is back (its instances may only stop).
        let cut = Instant::now();
        let mut started = std::collections::BTreeSet::new();
        while cut.elapsed() < NEM_CUT {
            for (host, inst) in self.running().into_values().flatten() {
                if host == h && !had.contains(&inst) {
                    started.insert(inst);
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.s.net.plug(h);
        println!(
            "{mode} round 3: instances started on the cut-off n{h} while cut off: {started:?}"
        );
        if mode == "majority" && !started.is_empty() {
            self.failures.push(format!(
                "{mode} round 3: the cut-off host n{h}, a minority, started {started:?} while cut off (a Control without a majority acted)"
            ));
        }
        let at = Instant::now();
        let fault = format!("partition of service host n{h} for {NEM_CUT:?}");
        self.finish_round(3, fault, None, before, at);
        self.recover(3, None);

        // 4. The Control's host frozen past the dead time, then resumed.
        let (c, _, before) = self.targets();
        self.signal_host(c, nix::sys::signal::Signal::SIGSTOP);
        std::thread::sleep(NEM_CUT);
        self.signal_host(c, nix::sys::signal::Signal::SIGCONT);
        let at = Instant::now();
        let fault = format!("SIGSTOP of the Control's host n{c} for {NEM_CUT:?}");
        self.finish_round(4, fault, None, before, at);
        self.recover(4, None);

        // 5. A drain of a service host.
        let (_, h, before) = self.targets();
        let at = Instant::now();
        if let Err(e) = self.s.cli(&["drain", &h.to_string()]) {
            self.failures
                .push(format!("{mode} round 5: drain of n{h} refused: {e}"));
        }
        let fault = format!("drain of service host n{h}");
        self.finish_round(5, fault, Some(h), before, at);
        self.recover(5, Some(h));

        // 6. SIGTERM of the Control's node: a planned stop that hands over.
        let (c, _, before) = self.targets();
        let at = Instant::now();
        if !self.term_node(c) {
            self.failures.push(format!(
                "{mode} round 6: the Control's node n{c} did not stop within 10 s of SIGTERM"
            ));
        }
        let fault = format!("SIGTERM of the Control's node n{c}");
        self.finish_round(6, fault, None, before, at);
        self.recover(6, None);

        // 7. Every node stopped (SIGTERM) and started again. The viewers stop first, so
        // that what comes back is what the cluster kept, not what viewers asked for again.
        self.stop_viewers();
        let before = (self.corrupt(), self.snapshot());
        for i in 1..=NEM_HOSTS {
            if !self.term_node(i) {
                self.failures.push(format!(
                    "{mode} round 7: n{i} did not stop within 10 s of SIGTERM"
                ));
            }
        }
        let orphans = self.running();
        if !orphans.is_empty() {
            self.failures.push(format!(
                "{mode} round 7: instances outlived their stopped nodes: {orphans:?}"
            ));
        }
        for i in 1..=NEM_HOSTS {
            let child = self.s.net.spawn(i);
            self.s.net.procs[i - 1] = Some(child);
            self.up[i - 1] = true;
        }
        let t = Instant::now();
        let mut snap = self.snapshot();
        while snap.control().is_none() && t.elapsed() < NEM_SETTLE {
            std::thread::sleep(Duration::from_millis(200));
            snap = self.snapshot();
        }
        let acting_ms = t.elapsed().as_millis() as u64;
        let t_act = Instant::now();
        while snap.control().is_some()
            && !snap.lost(&self.services).is_empty()
            && t_act.elapsed() < NEM_RESTART_WINDOW
        {
            std::thread::sleep(Duration::from_millis(300));
            snap = self.snapshot();
        }
        let back = NEM_SERVICES - snap.lost(&self.services).len();
        // From the start to the first look that found every service running again, by the
        // 300 ms looks above, which begin once one Control acts (none if not all came).
        let all_back_ms = (back == NEM_SERVICES).then(|| t.elapsed().as_millis() as u64);
        println!(
            "{}",
            serde_json::json!({
                "mode": mode,
                "round": 7,
                "control_acting_after_start_ms": acting_ms,
                "services_back_without_viewers": back,
                "all_back_after_start_ms": all_back_ms,
                "services_admitted": NEM_SERVICES,
                "window_ms": NEM_RESTART_WINDOW.as_millis() as u64,
                "required": SERVICES_SURVIVE_CLUSTER_RESTART,
            })
        );
        if snap.control().is_none() {
            self.failures.push(format!(
                "{mode} round 7: no single acting Control {NEM_SETTLE:?} after the restart: {snap:?}"
            ));
        }
        if SERVICES_SURVIVE_CLUSTER_RESTART && back < NEM_SERVICES {
            self.failures.push(format!(
                "{mode} round 7: {back} of {NEM_SERVICES} services came back after a whole-cluster restart: {:?} missing",
                snap.lost(&self.services)
            ));
        }
        // Viewers come back and ask: every service runs again, once, and plays. The settle
        // time counts from their return (the wait above is the test's, not the cluster's).
        self.start_viewers();
        let at = Instant::now();
        let fault = "whole-cluster SIGTERM and start (settle from the viewers' return)";
        self.finish_round(7, fault.into(), None, before, at);
        if let Some(r) = self.rounds.last_mut() {
            // Lost across the restart: what did not come back by itself.
            r.lost += NEM_SERVICES - back;
        }
        self.stop_viewers();
        self.summary();
    }

    fn summary(&mut self) {
        let mode = self.mode;
        let settles: Vec<f64> = self
            .rounds
            .iter()
            .filter_map(|r| r.settle_ms.map(|m| m as f64))
            .collect();
        let sum = |f: &dyn Fn(&Round) -> u64| self.rounds.iter().map(f).sum::<u64>();
        let max_settle = settles.iter().copied().fold(0.0, f64::max);
        println!(
            "{}",
            serde_json::json!({
                "mode": mode,
                "rounds": self.rounds.len(),
                "lost_rounds_1_6": sum(&|r| if r.round < 7 { r.lost as u64 } else { 0 }),
                "lost_round_7": sum(&|r| if r.round == 7 { r.lost as u64 } else { 0 }),
                "duplicates_after_settle": sum(&|r| r.duplicates_after_settle as u64),
                "corrupt": sum(&|r| r.corrupt),
                "stalled_viewers": sum(&|r| r.stalled_viewers as u64),
                "settle_p50_ms": p50(settles.clone()),
                "settle_max_ms": max_settle,
                "viewers": self.reports.len(),
                "viewer_reconnects": self.reports.iter().map(|(_, r)| r.reconnects as u64).sum::<u64>(),
                "viewer_bytes": self.reports.iter().map(|(_, r)| r.bytes).sum::<u64>(),
            })
        );
        for (video, r) in &self.reports {
            if r.integrity_errors > 0 || r.http_error.is_some() {
                self.failures
                    .push(format!("{mode}: viewer of {video} ended with {r:?}"));
            }
        }
        if let Some((stop, h)) = self.origin.take() {
            let _ = stop.send(());
            let _ = h.join();
        }
        assert!(
            self.failures.is_empty(),
            "{} failure(s) in {mode} mode:\n{}\n{}",
            self.failures.len(),
            self.failures.join("\n"),
            self.s.net.logs()
        );
    }
}

/// The faults of docs/figures.md ("Faults with services on namespace hosts") in available
/// mode. `cargo nextest run -p smart --test netns --run-ignored only -E 'test(nemesis)'
/// --no-capture` (root) prints one JSON line per round and a summary.
#[test]
#[ignore = "nemesis (minutes): run by .ci/run's benchmark step (--run-ignored only)"]
fn nemesis_available_mode_with_services_and_viewers() {
    if !can_run(false) {
        return;
    }
    Nemesis::start("available").run();
}

/// [`nemesis_available_mode_with_services_and_viewers`] in majority mode.
#[test]
#[ignore = "nemesis (minutes): run by .ci/run's benchmark step (--run-ignored only)"]
fn nemesis_majority_mode_with_services_and_viewers() {
    if !can_run(false) {
        return;
    }
    Nemesis::start("majority").run();
}

// ---- The case study on hosts -----------------------------------------------------------------

/// `smart demo --netns --json`, short, as a user runs it: every node, the origin and the
/// viewers on namespace hosts, with the loopback demo's faults plus a partition that heals
/// and the death of the viewers' front-end (keepalived moves its address). Nothing lost,
/// no corrupt byte, no stall, one instance of each service after settling, and nothing of
/// the run left behind (namespaces, processes, keepalived's run directory).
#[test]
fn the_demo_on_namespace_hosts_loses_nothing_through_every_fault() {
    if !can_run(false) {
        return;
    }
    if smart_vod::tools::require_bin("keepalived").is_none() {
        return;
    }
    let child = Command::new(BIN)
        .args([
            "demo",
            "--netns",
            "--json",
            "--duration",
            "40s",
            "--viewers",
            "40",
        ])
        .env("SMART_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    println!("{stdout}");
    let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let num = |k: &str| {
        s[k].as_f64()
            .unwrap_or_else(|| panic!("no {k} in the summary: {stdout}"))
    };
    assert_eq!(s["hosts"], "network namespaces", "{stdout}");
    assert_eq!(num("viewers_playing"), 40.0, "{stdout}");
    assert_eq!(num("lost_services"), 0.0, "{stdout}");
    assert_eq!(num("corrupt_streams"), 0.0, "{stdout}");
    assert_eq!(num("stalls"), 0.0, "{stdout}");
    assert_eq!(num("duplicates_after_settle"), 0.0, "{stdout}");
    assert_eq!(num("missing_after_settle"), 0.0, "{stdout}");
    // Every fault happened.
    assert!(num("control_failover_ms") > 0.0, "{stdout}");
    assert!(
        s["partition"].as_str().unwrap().ends_with("then healed"),
        "{stdout}"
    );
    assert!(num("frontend_failover_ms") > 0.0, "{stdout}");
    assert!(s["drain"].as_str().unwrap().starts_with('n'), "{stdout}");
    // The run's own names begin with `smdemo<pid>`.
    let prefix = format!("smdemo{pid}");
    let left = sh(&["ip", "netns", "list"]).unwrap();
    assert!(
        !left.lines().any(|l| l.starts_with(&prefix)),
        "left behind: {left}"
    );
    assert!(!std::path::Path::new(&format!("/run/{prefix}")).exists());
}

// ---- The three-host walkthrough --------------------------------------------------------------

/// docs/operations.md, "Three machines", on three namespace hosts: the shipped
/// `deploy/three-hosts` configurations with the namespaces' addresses (10.77.0.1–3 for
/// 10.0.0.11–13, the shared address 10.77.0.50 for 10.0.0.50) and this build's paths put
/// in (binaries, data directories, the profile and the player page; the `process` runtime
/// instead of `cgroup`, which needs the unit's delegated subtree), keys and a token made by
/// `smart keys` and `smart tokens new`, the `vod origin` of `deploy/origin` on host 1, the
/// front-end pair's keepalived on hosts 2 and 3; then a browser on the viewers' network
/// opens `/play/v1` on the shared address and plays.
#[test]
fn the_three_host_walkthrough_ends_with_a_browser_playing() {
    if !can_run(false) {
        return;
    }
    let Some((keepalived, ffmpeg, browser_tools)) = pair_tools() else {
        return;
    };
    // `cargo nextest run --workspace` builds it beside `smart`.
    let vod = std::path::Path::new(BIN).with_file_name("vod");
    let Some(vod) = smart_vod::tools::require(
        "the vod binary",
        vod.exists().then_some(vod),
        "cargo build -p smart-vod",
    ) else {
        return;
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let hosts = smart_bench::netns::Hosts::create("smwalk", 3, &[("c", 100)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "smart {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["keys", "--dir", d.to_str().unwrap(), "--nodes", "1,2,3"]);
    let tokens = d.join("tokens.toml");
    let token = run(&[
        "tokens",
        "new",
        "--scope",
        "admin",
        "--name",
        "ops",
        "--file",
        tokens.to_str().unwrap(),
    ])
    .trim()
    .to_string();
    // The origin's videos, as the walkthrough makes them (shorter).
    let video = smart_bench::videos::real_video(&ffmpeg, Duration::from_secs(60), KBPS).unwrap();
    let ts = d.join("v1.ts");
    std::fs::write(&ts, &video.data).unwrap();
    let mut daemons: Vec<Child> = Vec::new();
    let origin_args =
        std::fs::read_to_string(format!("{root}/deploy/origin/vod-origin.default")).unwrap();
    assert!(origin_args.contains("VOD_ORIGIN_LISTEN=10.0.0.11:8000"));
    daemons.push(
        Command::new("ip")
            .args(["netns", "exec", &hosts.ns(1)])
            .arg(&vod)
            .args(["origin", "--listen", "10.77.0.1:8000", "--file"])
            .arg(format!("v1={}", ts.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("origin.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    for i in 1..=3usize {
        let shipped =
            std::fs::read_to_string(format!("{root}/deploy/three-hosts/n{i}.toml")).unwrap();
        let mut cfg = shipped.clone();
        for k in 1..=3 {
            cfg = cfg.replace(&format!("10.0.0.1{k}"), &format!("10.77.0.{k}"));
        }
        cfg = cfg
            .replace("10.0.0.50", VIP)
            .replace("\"/var/lib/smart\"", &format!("\"n{i}\""))
            .replace("/usr/local/bin/smart", BIN)
            .replace(
                "/etc/smart/distributor.profile.json",
                &format!("{root}/config/profiles/distributor.json"),
            )
            .replace("/usr/local/share/smart/player", &format!("{root}/vod/ui"))
            .replace("runtime = \"cgroup\"", "runtime = \"process\"");
        assert_ne!(cfg, shipped);
        std::fs::write(d.join(format!("n{i}.toml")), cfg).unwrap();
        let check = run(&[
            "config",
            "check",
            d.join(format!("n{i}.toml")).to_str().unwrap(),
        ]);
        assert!(
            check.contains(&format!("advertise 10.77.0.{i}:7101")),
            "{check}"
        );
        let log = std::fs::File::create(d.join(format!("n{i}.log"))).unwrap();
        daemons.push(
            Command::new("ip")
                .args(["netns", "exec", &hosts.ns(i), BIN, "node", "--config"])
                .arg(d.join(format!("n{i}.toml")))
                .env("SMART_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }
    // `smart status` from host 3: three members, one Control.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("ip")
            .args(["netns", "exec", &hosts.ns(3), BIN, "status", "--json"])
            .args(["--addr", "http://10.77.0.3:7180", "--timeout", "2s"])
            .env("SMART_TOKEN", &token)
            .output()
            .unwrap();
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if s["control"]["node_id"].as_u64().is_some()
            && s["members"].as_array().is_some_and(|m| m.len() == 3)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Control with three members: {s}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    for (i, prio) in [(2, 150), (3, 100)] {
        daemons.push(start_keepalived(&hosts.ns(i), d, &keepalived, i, prio));
    }
    wait_for_vip(&hosts.ns(2), d, &[2, 3], Duration::from_secs(20));
    // The browser, on the viewers' network.
    let played = in_client(hosts.named("c"), move || async move {
        let mut br = smart_vod::browser::Browser::launch(&browser_tools)
            .await
            .unwrap();
        br.goto(&format!("http://{VIP}:7102/play/v1"))
            .await
            .unwrap();
        let t0 = Instant::now();
        let mut state = serde_json::Value::Null;
        while t0.elapsed() < Duration::from_secs(40) {
            state = br.eval(PAGE_STATE).await.unwrap_or(serde_json::Value::Null);
            if state["currentTime"].as_f64().unwrap_or(0.0) >= 5.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        br.close().await;
        (t0.elapsed(), state)
    })
    .join()
    .unwrap();
    for mut c in daemons {
        let _ = c.kill();
        let _ = c.wait();
    }
    let logs = || {
        (1..=3)
            .map(|i| {
                let t = std::fs::read_to_string(d.join(format!("n{i}.log"))).unwrap_or_default();
                let lines: Vec<&str> = t.lines().collect();
                format!(
                    "--- n{i}\n{}",
                    lines[lines.len().saturating_sub(10)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (took, state) = played;
    println!("the browser played 5 s of v1 within {took:?}: {state}");
    assert!(
        state["currentTime"].as_f64().unwrap_or(0.0) >= 5.0,
        "the page did not play: {state}\n{}",
        logs()
    );
    assert_eq!(
        state["errors"].as_array().map(Vec::len),
        Some(0),
        "video errors: {state}"
    );
    drop(hosts);
}

/// `smart bench migration` as a user runs it, two small points: each migration restores the
/// whole cache the source held, the viewers stall on nothing and get no corrupt byte, and
/// the plots are written.
#[test]
fn the_migration_sweep_command_measures_each_point() {
    if !can_run(false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "bench",
            "migration",
            "--cache-mb",
            "4",
            "--cache-sweep-viewers",
            "5",
            "--viewers",
            "2",
            "--viewer-sweep-cache-mb",
            "4",
            "--json",
            "--svg-dir",
        ])
        .arg(dir.path())
        .env("SMART_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let points: Vec<&serde_json::Value> = v["cache_sweep"]
        .as_array()
        .unwrap()
        .iter()
        .chain(v["viewer_sweep"].as_array().unwrap())
        .collect();
    assert_eq!(points.len(), 2, "{stdout}");
    for p in points {
        let n = |k: &str| p[k].as_f64().unwrap_or_else(|| panic!("{k} in {p}"));
        assert!(n("cache_bytes") >= 3_000_000.0, "{p}");
        assert!(n("restored_bytes") >= n("cache_bytes"), "{p}");
        assert!(n("total_ms") > 0.0 && n("restore_ms") > 0.0, "{p}");
        assert!(n("resumes") >= n("viewers"), "every viewer moved: {p}");
        // Nothing the pre-copy brought is fetched from the origin again.
        assert_eq!(n("refetched_bytes"), 0.0, "{p}");
        assert_eq!((n("stalls"), n("corrupt")), (0.0, 0.0), "{p}");
    }
    for f in ["migration-vs-cache.svg", "migration-vs-viewers.svg"] {
        let svg = std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(svg.contains("<svg"), "{f}");
    }
}
