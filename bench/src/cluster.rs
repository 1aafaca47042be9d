//! A local cluster of real `smart node` processes on loopback, for the demo, the failover
//! benchmark and the multi-process tests.
//!
//! Every cluster gets its own loopback addresses (`127.X.Y.n`), TCP/UDP port and multicast
//! port, derived from the process id and a counter, so that clusters started by parallel
//! tests or a running demo never hear each other. Its files (configs, key, data dirs, logs)
//! live in a temporary directory removed on drop, and every child process is killed on drop.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use smart_api::ClusterStatus;
use smart_api::client::ApiClient;
use smart_proto::ClusterKey;
use tokio::time::Instant;

/// Election mode of a local cluster (the nodes' `election.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ElectionMode {
    /// Any live node can become Control.
    #[default]
    Available,
    /// The Control is the desired-state log's Raft leader and acts only with a majority.
    Majority,
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// File or process error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A condition was not reached in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
    },
    /// The user stopped the run (Ctrl-C); what it started is removed on the way out.
    #[error("interrupted")]
    Interrupted,
    /// A node could not be asked.
    #[error("node n{node}: {reason}")]
    Node {
        /// The node.
        node: u64,
        /// Why.
        reason: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// The real distributor's profile (scripts/profile-distributor.sh), every cluster's default.
pub const DISTRIBUTOR_PROFILE: &str = include_str!("../../config/profiles/distributor.json");

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The `smart` executable.
    pub exe: PathBuf,
    /// Number of nodes (ids 1..=n).
    pub nodes: usize,
    /// Election mode.
    pub mode: ElectionMode,
    /// Extra TOML appended to every node's config (e.g. timing overrides; not
    /// `[admission]`: see `admission_toml`).
    pub extra_toml: String,
    /// Keys of every node's `[admission]` section (its `default_profile` is the measured
    /// distributor of `config/profiles/distributor.json`).
    pub admission_toml: String,
    /// `SMART_LOG` filter for the children.
    pub log: String,
    /// Environment for every child (e.g. `SMART_FAULT`).
    pub env: Vec<(String, String)>,
    /// Disable multicast: heartbeats go to the other nodes as unicast seeds only.
    pub unicast_only: bool,
    /// Nodes that also get the front-end role (HTTP on their address, port + 2).
    pub frontends: Vec<u64>,
    /// Nodes without the agent and control roles (they run no services and never lead).
    pub no_agent: Vec<u64>,
    /// The videos' origin, for the front-ends' distributor template.
    pub origin: String,
    /// Bitrate of the videos (bits/s).
    pub bitrate_bps: u64,
    /// NIC bandwidth each node offers (bits/s): small values make admission bite.
    pub nic_bps: u64,
    /// Extra keys of every node's `[frontend]` table, e.g. `progressive = "relay"`.
    pub frontend_toml: String,
    /// `[frontend] new_services_per_sec` and `new_services_burst`: generous by default
    /// (every viewer of a test comes from one address), tight in the rate-limit tests.
    pub new_services: (f64, u32),
    /// `[frontend] viewer_admissions_*` and `video_admissions_*` (the same rate and burst
    /// for both): generous by default (every viewer of a test comes from one address);
    /// `None` leaves the shipped defaults, as the flood tests do.
    pub viewer_admissions: Option<(f64, u32)>,
    /// Serve every node's HTTP API over TLS (`[http_tls]`), with a cluster CA and node
    /// certificates made by `smart_node::tls` in the cluster's directory.
    pub http_tls: bool,
    /// `ulimit -n` (soft and hard) of every node process, e.g. to test descriptor exhaustion.
    pub nofile: Option<u64>,
    /// Run node `i` on host `i` of these namespaces (its own address, multicast on `eth0`,
    /// front-ends bound to every address so that a shared one arrives) instead of on
    /// loopback.
    pub hosts: Option<std::sync::Arc<crate::netns::Hosts>>,
    /// More arguments of the front-ends' distributor command (e.g. `--window-mb 72`).
    pub distributor_args: Vec<String>,
}

impl ClusterSpec {
    /// `n` nodes with default timings, available mode.
    pub fn new(exe: impl Into<PathBuf>, nodes: usize) -> Self {
        Self {
            exe: exe.into(),
            nodes,
            mode: ElectionMode::Available,
            extra_toml: String::new(),
            admission_toml: String::new(),
            log: "info".into(),
            env: Vec::new(),
            unicast_only: false,
            frontends: Vec::new(),
            no_agent: Vec::new(),
            origin: "http://127.0.0.1:8000".into(),
            bitrate_bps: 400_000,
            nic_bps: 1_000_000_000,
            frontend_toml: String::new(),
            new_services: (1000.0, 1000),
            viewer_admissions: Some((10_000.0, 10_000)),
            http_tls: false,
            nofile: None,
            hosts: None,
            distributor_args: Vec::new(),
        }
    }
}

/// One node process.
#[derive(Debug)]
pub struct NodeProc {
    /// Node id.
    pub id: u64,
    /// Its `listen` address.
    pub addr: SocketAddr,
    /// Its config file.
    pub config: PathBuf,
    /// The running process, if any.
    pub child: Option<Child>,
}

/// A running local cluster. Dropping it kills every node and removes its files.
///
/// Every node serves the HTTP API on its address, port + 3 ([`LocalCluster::http_url`]),
/// with a tokens file holding one admin and one read token ([`LocalCluster::admin_token`],
/// [`LocalCluster::read_token`]).
#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    key: ClusterKey,
    admin_token: String,
    read_token: String,
    keys: smart_transport::keys::ClusterKeys,
    spec: ClusterSpec,
    /// The nodes, index `i` is node `i + 1`.
    pub nodes: Vec<NodeProc>,
}

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

impl LocalCluster {
    /// Writes the configs and key, and starts every node.
    pub fn start(spec: ClusterSpec) -> Result<Self, ClusterError> {
        // The process's HTTPS clients (the API over `[http_tls]`) need it before they are
        // built; every suite starts its cluster first.
        smart_node::tls::install_provider();
        let seq = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // 127.X.Y.n: X from the pid, Y from the counter, so that parallel clusters differ.
        let x = 100 + (pid % 100) as u8;
        let y = (seq % 250) as u8 + 1;
        // On namespace hosts every node has an address of its own: the ports an operator
        // would pick.
        let port = match spec.hosts {
            Some(_) => 7101,
            None => 20_000 + ((pid * 7 + seq * 13) % 20_000) as u16,
        };
        let mport = port + 1;
        let group = Ipv4Addr::new(239, 255, 78, y);
        let dir = std::env::temp_dir().join(format!("smart-cluster-{pid}-{seq}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let ids: Vec<u64> = (1..=spec.nodes as u64).collect();
        let keys = smart_transport::keys::generate(&dir, &ids).map_err(|e| ClusterError::Io {
            what: "making the cluster's keys".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let key = ClusterKey::load(&keys.cluster_key_file()).map_err(|e| ClusterError::Io {
            what: "reading cluster.key".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        fs::write(dir.join("distributor.profile.json"), DISTRIBUTOR_PROFILE)
            .map_err(io("writing distributor.profile.json"))?;
        let token = || {
            let b: [u8; 32] = rand::random();
            format!(
                "smart_{}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            )
        };
        let (admin_token, read_token) = (token(), token());
        let digest = |t: &str| -> String {
            use sha2::Digest;
            sha2::Sha256::digest(t.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        fs::write(
            dir.join("tokens.toml"),
            format!(
                "[[token]]\nname = \"test-admin\"\nscope = \"admin\"\nsha256 = \"{}\"\n\n[[token]]\nname = \"test-read\"\nscope = \"read\"\nsha256 = \"{}\"\n",
                digest(&admin_token),
                digest(&read_token)
            ),
        )
        .map_err(io("writing tokens.toml"))?;
        let members: Vec<String> = (1..=spec.nodes).map(|i| i.to_string()).collect();
        let hosts = spec.hosts.clone();
        let addr_of = |i: usize| match &hosts {
            Some(h) => SocketAddr::from((h.ip(i), port)),
            None => SocketAddr::from((Ipv4Addr::new(127, x, y, i as u8), port)),
        };
        let multicast_if = match spec.hosts {
            Some(_) => "\"eth0\"\nloopback = false",
            None => "\"127.0.0.1\"",
        };
        let mut nodes = Vec::new();
        for i in 1..=spec.nodes {
            let addr = addr_of(i);
            let seeds: Vec<String> = (1..=spec.nodes)
                .filter(|&j| j != i && spec.unicast_only)
                .map(|j| format!("\"{}\"", addr_of(j)))
                .collect();
            let mode = match spec.mode {
                ElectionMode::Available => "available",
                ElectionMode::Majority => "majority",
            };
            // A node without the agent role is a pure front-end: it runs no services and is
            // never elected Control, so killing service nodes or the Control never takes
            // the viewers' entry point with it.
            let mut roles = vec![];
            if !spec.no_agent.contains(&(i as u64)) {
                roles.push("\"agent\"");
                roles.push("\"control\"");
            }
            if i == 1 {
                roles.push("\"profiler\"");
            }
            let mut top = format!(
                "nic_bps = {}\nhttp_listen = \"{}\"\ntokens_file = \"tokens.toml\"\n",
                spec.nic_bps,
                SocketAddr::new(addr.ip(), port + 3)
            );
            if spec.frontends.contains(&(i as u64)) {
                roles.push("\"front-end\"");
                let ip = match spec.hosts {
                    Some(_) => Ipv4Addr::UNSPECIFIED.into(),
                    None => addr.ip(),
                };
                let http = SocketAddr::new(ip, port + 2);
                top.push_str(&format!("frontend_http = \"{http}\"\n"));
            }
            let roles = format!("[{}]", roles.join(", "));
            let exe = spec.exe.display().to_string();
            let more: String = spec
                .distributor_args
                .iter()
                .map(|a| format!(", {a:?}"))
                .collect();
            let viewers = spec
                .viewer_admissions
                .map(|(rate, burst)| {
                    format!(
                        "viewer_admissions_per_sec = {rate:?}\nviewer_admissions_burst = {burst}\nvideo_admissions_per_sec = {rate:?}\nvideo_admissions_burst = {burst}\n"
                    )
                })
                .unwrap_or_default();
            let toml = format!(
                "node_id = {i}\ndata_dir = \"n{i}\"\nlisten = \"{addr}\"\ncluster_key_file = \"cluster.key\"\nnode_key_file = \"n{i}.key\"\nnode_public_keys_file = \"nodes.pub\"\nroles = {roles}\nseeds = [{}]\n{top}\n[frontend]\ndistributor_command = [{exe:?}, \"distributor\", \"--listen\", \"{{listen}}\", \"--origin\", \"{{origin}}\"{more}]\norigin = {:?}\nbitrate_bps = {}\nnew_services_per_sec = {:?}\nnew_services_burst = {}\n{viewers}{}\n\n[multicast]\nenabled = {}\ngroup = \"{group}\"\nport = {mport}\ninterface = {multicast_if}\n\n[election]\nmode = \"{mode}\"\nmembers = [{}]\n{}\n",
                seeds.join(", "),
                spec.origin,
                spec.bitrate_bps,
                spec.new_services.0,
                spec.new_services.1,
                spec.frontend_toml,
                !spec.unicast_only,
                members.join(", "),
                spec.extra_toml
            );
            let mut toml = format!(
                "{toml}\n[admission]\ndefault_profile = \"distributor.profile.json\"\n{}\n",
                spec.admission_toml
            );
            if spec.http_tls {
                let tls_err = |e: smart_node::tls::TlsError| ClusterError::Io {
                    what: "making the API's certificates".into(),
                    source: std::io::Error::other(e.to_string()),
                };
                smart_node::tls::make_ca(&dir).map_err(tls_err)?;
                smart_node::tls::issue(&dir, &format!("n{i}"), &[addr.ip().to_string()])
                    .map_err(tls_err)?;
                toml.push_str(&format!(
                    "\n[http_tls]\ncert_file = \"n{i}-api.crt\"\nkey_file = \"n{i}-api.key\"\nca_file = \"api-ca.crt\"\n"
                ));
            }
            let config = dir.join(format!("n{i}.toml"));
            fs::write(&config, toml).map_err(io("writing node config"))?;
            nodes.push(NodeProc {
                id: i as u64,
                addr,
                config,
                child: None,
            });
        }
        let mut c = Self {
            dir,
            key,
            admin_token,
            read_token,
            keys,
            spec,
            nodes,
        };
        for i in 1..=c.spec.nodes as u64 {
            c.start_node(i)?;
        }
        Ok(c)
    }

    /// The cluster key.
    pub fn key(&self) -> &ClusterKey {
        &self.key
    }

    /// Node `id`'s HTTP API, `http://addr:port+3` (`https://` with `http_tls`).
    pub fn http_url(&self, id: u64) -> String {
        let a = self.nodes[(id - 1) as usize].addr;
        let scheme = if self.spec.http_tls { "https" } else { "http" };
        format!("{scheme}://{}:{}", a.ip(), a.port() + 3)
    }

    /// Node `id`'s configuration file.
    pub fn config_path(&self, id: u64) -> PathBuf {
        self.nodes[(id - 1) as usize].config.clone()
    }

    /// The CA certificate of the API's TLS (`api-ca.crt`; made only with `http_tls`).
    pub fn api_ca_file(&self) -> PathBuf {
        self.dir.join("api-ca.crt")
    }

    /// A token with the admin scope.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// A token with the read scope.
    pub fn read_token(&self) -> &str {
        &self.read_token
    }

    /// What a message-API client of this cluster presents: the admin token, or the read
    /// token, and the cluster's key book.
    pub fn credentials(&self, admin: bool) -> smart_api::client::Credentials {
        let token = if admin {
            &self.admin_token
        } else {
            &self.read_token
        };
        smart_api::client::Credentials::new(token.clone(), self.keys.book.clone())
    }

    /// The cluster's key files and node keys.
    pub fn keys(&self) -> &smart_transport::keys::ClusterKeys {
        &self.keys
    }

    /// A transport endpoint speaking as node `id`, with its real key (what that node's own
    /// process presents): for tests that send node-to-node requests by hand.
    pub fn node_endpoint(&self, id: u64, incarnation: u64) -> smart_transport::Endpoint {
        let key = self
            .keys
            .node_key(id)
            .expect("a node of this cluster")
            .clone();
        smart_transport::Endpoint::node(smart_proto::NodeId(id), incarnation, self.key.clone())
            .with_keys(key, self.keys.book.clone())
    }

    /// The cluster's directory (configs, data, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn node(&mut self, id: u64) -> &mut NodeProc {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Starts (or restarts) node `id`.
    pub fn start_node(&mut self, id: u64) -> Result<(), ClusterError> {
        let exe = self.spec.exe.clone();
        let log_path = self.dir.join(format!("n{id}.log"));
        let env = self.spec.env.clone();
        let filter = self.spec.log.clone();
        let nofile = self.spec.nofile;
        let netns = self.spec.hosts.as_ref().map(|h| h.ns(id as usize));
        let n = self.node(id);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io("opening node log"))?;
        let log2 = log.try_clone().map_err(io("cloning log handle"))?;
        let mut cmd = match &netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        if let Some(limit) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .arg("node")
            .arg("--config")
            .arg(&n.config)
            .env("SMART_LOG", filter)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io(format!("starting {}", exe.display())))?;
        n.child = Some(child);
        Ok(())
    }

    fn signal(&mut self, id: u64, sig: nix::sys::signal::Signal) -> Result<(), ClusterError> {
        let n = self.node(id);
        let Some(child) = n.child.as_ref() else {
            return Err(ClusterError::Node {
                node: id,
                reason: "not running".into(),
            });
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).map_err(|e| {
            ClusterError::Node {
                node: id,
                reason: format!("signal {sig}: {e}"),
            }
        })
    }

    /// `kill -9` node `id` and reap it. The service instances it ran are killed too, as if
    /// the machine had died (on one host they would otherwise outlive their agent).
    pub fn kill(&mut self, id: u64) -> Result<(), ClusterError> {
        self.signal(id, nix::sys::signal::Signal::SIGKILL)?;
        if let Some(mut c) = self.node(id).child.take() {
            let _ = c.wait();
        }
        let dir = self.dir.join(format!("n{id}")).join("instances");
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().and_then(|x| x.to_str()) != Some("pid") {
                    continue;
                }
                if let Some(pgid) = fs::read_to_string(&p)
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok())
                    .filter(|g| *g > 1)
                {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pgid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        Ok(())
    }

    /// The front-end URL of node `id` (`http://addr:port+2`), when it has the role.
    pub fn frontend_url(&self, id: u64) -> Option<String> {
        self.spec.frontends.contains(&id).then(|| {
            let a = self.nodes[(id - 1) as usize].addr;
            format!("http://{}:{}", a.ip(), a.port() + 2)
        })
    }

    /// The namespace hosts the nodes run on, if they do.
    pub fn hosts(&self) -> Option<&std::sync::Arc<crate::netns::Hosts>> {
        self.spec.hosts.as_ref()
    }

    /// An API client connected to node `id`, with the admin token.
    pub async fn client(&self, id: u64) -> Result<ApiClient, ClusterError> {
        let addr = self.nodes[(id - 1) as usize].addr.to_string();
        ApiClient::connect(&addr, self.credentials(true))
            .await
            .map_err(|e| ClusterError::Node {
                node: id,
                reason: e.to_string(),
            })
    }

    /// SIGSTOP node `id` (it stays in memory, silent: a "zombie" Control).
    pub fn pause(&mut self, id: u64) -> Result<(), ClusterError> {
        self.signal(id, nix::sys::signal::Signal::SIGSTOP)
    }

    /// SIGCONT node `id`.
    pub fn resume(&mut self, id: u64) -> Result<(), ClusterError> {
        self.signal(id, nix::sys::signal::Signal::SIGCONT)
    }

    /// SIGTERM node `id`: a planned stop (it hands the Control over and stops its
    /// instances). [`LocalCluster::wait_exit`] reaps it.
    pub fn terminate(&mut self, id: u64) -> Result<(), ClusterError> {
        self.signal(id, nix::sys::signal::Signal::SIGTERM)
    }

    /// Waits until node `id`'s process has exited, reaps it and returns its exit code.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Result<Option<i32>, ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exited(id) {
                self.node(id).child = None;
                return Ok(code);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!("node {id} to exit"),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until node `id` reports that its Control acts (`control_acting` = 1).
    pub async fn wait_acting(&self, id: u64, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = self.status(id).await
                && s.counters
                    .iter()
                    .any(|(k, v)| k == "control_acting" && *v == 1)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!("node {id}'s Control to act"),
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether node `id`'s process has exited, with its exit code.
    pub fn exited(&mut self, id: u64) -> Option<Option<i32>> {
        let c = self.node(id).child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => Some(st.code()),
            _ => None,
        }
    }

    /// The ids of nodes whose process is running.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Asks node `id` for its status (one connection per call).
    pub async fn status(&self, id: u64) -> Result<ClusterStatus, ClusterError> {
        let addr = self.nodes[(id - 1) as usize].addr.to_string();
        let client = ApiClient::connect(&addr, self.credentials(false))
            .await
            .map_err(|e| ClusterError::Node {
                node: id,
                reason: e.to_string(),
            })?
            .with_timeout(Duration::from_millis(500));
        client.status().await.map_err(|e| ClusterError::Node {
            node: id,
            reason: e.to_string(),
        })
    }

    /// Waits until `nodes` agree on the desired-state log's leader and have all applied
    /// the same last entry (a restarted node has caught up): majority mode's Control
    /// cannot move to a node whose log is behind.
    pub async fn wait_desired_caught_up(
        &self,
        nodes: &[u64],
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = std::collections::BTreeSet::new();
            for &n in nodes {
                let figures = self.status(n).await.ok().map(|s| {
                    let get = |k: &str| s.counters.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
                    (get("desired_leader"), get("desired_last_applied"))
                });
                seen.insert(figures);
            }
            if seen.len() == 1
                && let Some(Some((Some(leader), Some(_)))) = seen.first()
                && *leader != 0
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!("nodes {nodes:?} to catch up with the desired-state log"),
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every node in `nodes` reports the same Control, which satisfies `pred`,
    /// polling every 10 ms. Returns that Control's `(node id, epoch)`.
    pub async fn wait_agreed_control(
        &self,
        nodes: &[u64],
        timeout: Duration,
        pred: impl Fn(u64, u64) -> bool,
    ) -> Result<(u64, u64), ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut agreed: Option<(u64, u64)> = None;
            let mut ok = true;
            for &n in nodes {
                match self.status(n).await {
                    Ok(ClusterStatus {
                        control: Some(c), ..
                    }) if pred(c.node_id.0, c.epoch) => match agreed {
                        None => agreed = Some((c.node_id.0, c.epoch)),
                        Some(a) if a == (c.node_id.0, c.epoch) => {}
                        Some(_) => ok = false,
                    },
                    _ => ok = false,
                }
                if !ok {
                    break;
                }
            }
            if ok && let Some(a) = agreed {
                return Ok(a);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!("nodes {nodes:?} to agree on a control"),
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The Control's listing of services, asked through node `via` (empty when it does not
    /// answer: an election).
    pub async fn services(&self, via: u64) -> Vec<smart_api::ServiceStatus> {
        let Ok(cl) = self.client(via).await else {
            return Vec::new();
        };
        match cl
            .with_timeout(Duration::from_secs(5))
            .request(smart_api::Request::Services)
            .await
        {
            Ok(smart_api::Response::Services(s)) => s,
            _ => Vec::new(),
        }
    }

    /// Node `id`'s counters now (empty if it does not answer).
    pub async fn counters(&self, id: u64) -> std::collections::BTreeMap<String, u64> {
        self.status(id)
            .await
            .map(|s| s.counters.into_iter().collect())
            .unwrap_or_default()
    }

    /// The last lines of node `id`'s log, for failure messages.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = fs::read_to_string(self.dir.join(format!("n{id}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for id in self.running() {
            // SIGKILL also ends a stopped process; reaped, and its instances killed.
            let _ = self.kill(id);
        }
        if std::env::var_os("SMART_KEEP_CLUSTER").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The service instance processes of the cluster whose files are in `dir`:
/// `(service, node, instance)`, from the processes themselves, not from what a node says.
/// The agent starts each with `SMART_CONTROL_SOCKET=<data dir>/instances/<instance>.sock`
/// (data dir `n<node>` in `dir`), and instance names are `<service>.<generation>`.
pub fn running_instances(dir: &Path) -> Vec<(String, u64, String)> {
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        if !p
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        // A zombie (killed, not reaped yet) has an empty environment.
        let Ok(env) = fs::read(p.path().join("environ")) else {
            continue;
        };
        let Some(sock) = env
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(b"SMART_CONTROL_SOCKET="))
        else {
            continue;
        };
        let mut sock = PathBuf::from(String::from_utf8_lossy(sock).into_owned());
        if sock.is_relative()
            && let Ok(cwd) = fs::read_link(p.path().join("cwd"))
        {
            sock = cwd.join(sock);
        }
        let Ok(rest) = sock.strip_prefix(dir) else {
            continue;
        };
        let node = rest
            .iter()
            .next()
            .and_then(|n| n.to_str()?.strip_prefix('n')?.parse::<u64>().ok());
        let (Some(node), Some(inst)) = (
            node,
            sock.file_stem().map(|s| s.to_string_lossy().into_owned()),
        ) else {
            continue;
        };
        let svc = inst.rsplit_once('.').map_or(inst.as_str(), |(s, _)| s);
        out.push((svc.to_string(), node, inst));
    }
    out
}
