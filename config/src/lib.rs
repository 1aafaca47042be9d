//! # smart-config
//!
//! Node configuration: the TOML file given to `smart node --config FILE`.
//!
//! Every key has a documented default (see `config/example.toml`), so a minimal file only
//! names the node, its address and the cluster key. Relative paths (`data_dir`,
//! `cluster_key_file`) are resolved against the directory of the config file, so a cluster
//! directory such as `config/loopback-3/` can be used from anywhere.
//!
//! A bad file fails with the file name, the key and what is wrong: parse and type errors come
//! from `toml` with line, column and the offending line; unknown keys are refused (a typo must
//! not silently fall back to a default); semantic checks name the key themselves.

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

use smart_proto::agent::{
    MIGRATE_IN_TIMEOUT_MULTIPLE, MIGRATE_OUT_TIMEOUT_MULTIPLE, START_TIMEOUT_MULTIPLE,
};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use smart_proto::{NodeId, Role};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse or a value had the wrong type.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message (line, column, key).
        source: Box<toml::de::Error>,
    },
    /// A value parsed but makes no sense.
    #[error("invalid config file {path}: key `{key}`: {reason}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The key at fault, dotted.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Election safety mode (docs/DESIGN.md §2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ElectionMode {
    /// Thesis behaviour: any live node can become Control and regenerate the cluster.
    #[default]
    Available,
    /// The Control is the leader of the desired-state log's Raft group (the
    /// `election.members`) and acts only while a majority of them acknowledged it.
    Majority,
}

/// `[multicast]`: the heartbeat channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MulticastConfig {
    /// Set to false on networks without multicast: heartbeats then go to `seeds` only.
    pub enabled: bool,
    /// IPv4 multicast group.
    pub group: Ipv4Addr,
    /// UDP port of the group.
    pub port: u16,
    /// Interface to send and receive on, by name (`eth0`) or IPv4 address. Named explicitly
    /// so that a multi-homed node never heartbeats on the wrong network.
    pub interface: String,
    /// Multicast TTL (1 = never leaves the local network).
    pub ttl: u32,
    /// Deliver our own group datagrams to sockets on this host. Needed when several nodes
    /// share one host (the loopback cluster); our own datagrams are dropped by node id.
    pub loopback: bool,
}

impl Default for MulticastConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            group: Ipv4Addr::new(239, 255, 77, 1),
            port: 7100,
            interface: "127.0.0.1".into(),
            ttl: 1,
            loopback: true,
        }
    }
}

/// `[timing]`: heartbeat, failure detection, election and request timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimingConfig {
    /// Heartbeat interval.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A member not heard from for this long is declared dead.
    #[serde(with = "humantime_serde")]
    pub dead_after: Duration,
    /// Election backoff window B: a node waits a random time in `[0, B]` before claiming.
    #[serde(with = "humantime_serde")]
    pub election_backoff: Duration,
    /// Shorter backoff window for profiler nodes, which the thesis prefers as Control.
    #[serde(with = "humantime_serde")]
    pub profiler_backoff: Duration,
    /// Default timeout of every request between nodes: the unit the other request
    /// timeouts are multiples of (see [`TimingConfig::derived`]).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The deadline of one message-API request from its first caller (a viewer's request
    /// at the front-end, an HTTP API call, a request on the TCP port): every step on its
    /// way (forward attempts, the TCP forward, the Control's wait for a start) uses what is
    /// left of it. Default: the timeout of a `Start` (5 × `request_timeout`), since a
    /// video's first viewer waits for its distributor to start.
    #[serde(default, with = "humantime_serde")]
    pub request_budget: Option<Duration>,
    /// The Control moves a service that runs over its profile (an anomaly) at most once
    /// within this time.
    #[serde(with = "humantime_serde")]
    pub anomaly_move_every: Duration,
    /// The Control releases clients that left (from the distributors' client counts) only
    /// this long after the service's start or migration (viewers are reconnecting).
    #[serde(with = "humantime_serde")]
    pub client_release_grace: Duration,
    /// An admitted client is tentative for this long: its distributor may not count it
    /// yet. After it, a client its distributor does not count is released (a viewer that
    /// took its redirect and never came), so a `/watch` costs a reservation for about this
    /// long unless its viewer arrives.
    #[serde(with = "humantime_serde")]
    pub client_arrival_window: Duration,
    /// A member dead for this long is forgotten (member table, replay guard, detector).
    #[serde(with = "humantime_serde")]
    pub forget_after: Duration,
}

impl Default for TimingConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(100),
            dead_after: Duration::from_millis(450),
            election_backoff: Duration::from_millis(300),
            profiler_backoff: Duration::from_millis(100),
            request_timeout: Duration::from_secs(2),
            request_budget: None,
            anomaly_move_every: Duration::from_secs(60),
            client_release_grace: Duration::from_secs(10),
            client_arrival_window: Duration::from_secs(3),
            forget_after: Duration::from_secs(600),
        }
    }
}

/// Every request timeout of a node, as derived from `[timing]` (`smart config check`
/// prints them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DerivedTimings {
    /// A message-API request's deadline from its first caller ([`TimingConfig::budget`]).
    pub request_budget: Duration,
    /// One node-to-node exchange (reports, reservations, registry copies, events).
    pub exchange: Duration,
    /// An agent's `Start` and `Stop`, which a first viewer's admission waits for.
    pub start: Duration,
    /// An agent's `MigrateOut` (checkpoint and hand-off).
    pub migrate_out: Duration,
    /// An agent's `MigrateIn` (a restore that may copy a cache across hosts).
    pub migrate_in: Duration,
}

impl TimingConfig {
    /// The deadline of one message-API request: `request_budget`, else the timeout of a
    /// `Start`.
    pub fn budget(&self) -> Duration {
        self.request_budget
            .unwrap_or(self.request_timeout * START_TIMEOUT_MULTIPLE)
    }

    /// Every request timeout, derived from `request_timeout` and `request_budget`.
    pub fn derived(&self) -> DerivedTimings {
        DerivedTimings {
            request_budget: self.budget(),
            exchange: self.request_timeout,
            start: self.request_timeout * START_TIMEOUT_MULTIPLE,
            migrate_out: self.request_timeout * MIGRATE_OUT_TIMEOUT_MULTIPLE,
            migrate_in: self.request_timeout * MIGRATE_IN_TIMEOUT_MULTIPLE,
        }
    }
}

/// `[election]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ElectionConfig {
    /// `available` (default) or `majority`.
    pub mode: ElectionMode,
    /// The configured cluster members (node ids, this node included), required in every
    /// mode: heartbeats, claims and Control views from any other id are dropped and
    /// counted; in `majority` mode it is also the set a majority is counted from.
    pub members: Vec<u64>,
    /// A message whose epoch is more than this above the highest seen is dropped (unless a
    /// majority of the other members report it), so one forged datagram cannot push the
    /// cluster's epochs to the end of their range.
    pub max_epoch_step: u64,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        Self {
            mode: ElectionMode::Available,
            members: Vec::new(),
            max_epoch_step: smart_proto::heartbeat::DEFAULT_MAX_EPOCH_STEP,
        }
    }
}

/// `[limits]`: admission of TCP connections (node-to-node and message API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Authenticated client connections held at once; more are closed after their
    /// handshake. Members have a pool of their own (clients never keep one out).
    pub max_connections: usize,
    /// Authenticated client connections from one IP address at once.
    pub max_connections_per_addr: usize,
    /// Connections still handshaking at once; a new one beyond it evicts the oldest.
    pub max_handshaking: usize,
    /// Connections still handshaking from one IP address; beyond it that address's oldest
    /// is evicted.
    pub max_handshaking_per_addr: usize,
    /// A connection that has not completed its handshake within this is closed.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A client connection with no frame either way and no request in progress for this
    /// long is closed (its client reconnects when it next asks).
    #[serde(with = "humantime_serde")]
    pub client_idle_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = smart_transport::Limits::default();
        Self {
            max_connections: l.max_connections,
            max_connections_per_addr: l.max_connections_per_addr,
            max_handshaking: l.max_handshaking,
            max_handshaking_per_addr: l.max_handshaking_per_addr,
            handshake_timeout: l.handshake_timeout,
            client_idle_timeout: l.client_idle_timeout,
        }
    }
}

impl LimitsConfig {
    /// The transport limits with these values (others at their defaults).
    pub fn transport(&self) -> smart_transport::Limits {
        smart_transport::Limits {
            max_connections: self.max_connections,
            max_connections_per_addr: self.max_connections_per_addr,
            max_handshaking: self.max_handshaking,
            max_handshaking_per_addr: self.max_handshaking_per_addr,
            handshake_timeout: self.handshake_timeout,
            client_idle_timeout: self.client_idle_timeout,
            ..Default::default()
        }
    }
}

/// `[heartbeat]`: keys of the heartbeat datagrams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// A keyring file (one key per line, the first primary, the others accepted only):
    /// rotates the heartbeat key without a flag day. Default: the cluster key alone.
    pub keys_file: Option<PathBuf>,
    /// Send heartbeats encrypted (XChaCha20-Poly1305) instead of HMAC-signed in clear. Both
    /// are always accepted under a ring key, so a cluster can switch node by node.
    pub encrypt: bool,
}

/// `[supervision]`: restart intensity of the node supervision tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// At most this many restarts of children ...
    pub max_restarts: u32,
    /// ... within this window; one more and the node exits non-zero (escalation).
    #[serde(with = "humantime_serde")]
    pub within: Duration,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            within: Duration::from_secs(10),
        }
    }
}

/// Instance runtime driver of Agent86.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeDriver {
    /// Process groups (works anywhere; limits are not enforced).
    Process,
    /// cgroups v2/v1 when available (CPU and memory limits enforced), else process groups
    /// (and the node says limits are not enforced).
    #[default]
    Cgroup,
}

/// `[agent]`: Agent86.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// `cgroup` (default: limits enforced where the node allows cgroups, else process
    /// groups) or `process`.
    pub runtime: RuntimeDriver,
    /// Sampling interval of instances and node.
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
    /// Grace period between SIGTERM and SIGKILL when stopping an instance.
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    /// TCP port of the checkpoint export on the data-plane address, where migration
    /// targets on other hosts pull this node's instances' caches (authenticated with the
    /// cluster key). 0 (default): any free port, told to the Control in the agent's
    /// reports; set one to open it in a firewall.
    pub checkpoint_port: u16,
    /// The commands service instances may run: each entry is a prefix of a command line
    /// (the program, then optionally its first arguments); `"smart"` also matches this
    /// binary wherever it lies; `[["*"]]` allows any command. Default: `smart distributor`
    /// only. The front-end's own `distributor_command` is always allowed (up to its first
    /// `{placeholder}`).
    pub allowed_commands: Vec<Vec<String>>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            runtime: RuntimeDriver::Cgroup,
            sample_interval: Duration::from_secs(1),
            stop_grace: Duration::from_secs(1),
            checkpoint_port: 0,
            allowed_commands: vec![vec!["smart".into(), "distributor".into()]],
        }
    }
}

/// `[admission]`: how the Control admits services and clients, what it reserves and the
/// limits Agent86 enforces (docs/DESIGN.md §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// `chernoff` (default: the most viewers at the target overload in `smart sim`),
    /// `empirical` (the thesis's percentile of sums), `gaussian`, `peak`, `mean`.
    pub estimator: smart_admission::EstimatorKind,
    /// Confidence C of the probabilistic tests.
    pub confidence: f64,
    /// Reference value VR: the fraction of a node's capacity admitted load may reach.
    pub vr: f64,
    /// `worst-fit` (default), `first-fit` or `best-fit`.
    pub policy: smart_admission::Policy,
    /// Intervals of the estimators' time-aligned series.
    pub grid: usize,
    /// A reservation is this quantile of the profile (base + clients × increment).
    pub reserve_quantile: f64,
    /// CPU limit = reservation × `cpu_headroom` (at least 0.1 core).
    pub cpu_headroom: f64,
    /// Memory limit = reservation × `mem_headroom` + 32 MiB.
    pub mem_headroom: f64,
    /// Profile (a `smart profile` JSON file) for classes without one of their own; unset:
    /// such classes are refused.
    pub default_profile: Option<PathBuf>,
    /// Stop a service with no clients for this long (`0s`: never).
    #[serde(with = "humantime_serde")]
    pub idle_stop_after: Duration,
    /// Refinement window, samples per class.
    pub refine_window: usize,
    /// Samples before a class's profile is refined at all.
    pub refine_min_samples: usize,
    /// Relative change of the window's p95 that makes a new profile version.
    pub refine_change: f64,
    /// Cap on a migration's copy rate, bits/s, reserved on both nodes while it runs
    /// (0: uncapped and not reserved).
    pub copy_rate_bps: u64,
}

impl Default for AdmissionConfig {
    /// The defaults; the Control's own (`smart_control::AdmissionSettings::default`) are
    /// derived from these.
    fn default() -> Self {
        Self {
            estimator: smart_admission::EstimatorKind::Chernoff,
            confidence: 0.95,
            vr: 0.9,
            policy: smart_admission::Policy::WorstFit,
            grid: 64,
            reserve_quantile: 0.99,
            cpu_headroom: 2.0,
            mem_headroom: 1.5,
            default_profile: None,
            idle_stop_after: Duration::from_secs(60),
            refine_window: 600,
            refine_min_samples: 120,
            refine_change: 0.10,
            copy_rate_bps: 400_000_000,
        }
    }
}

/// `[health]`: Agent86's node checks, run every sample interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Run the checks (memory available and pressure, thermal zones, `command`).
    pub enabled: bool,
    /// A command judging the node by its exit code (0: healthy), with a timeout of one
    /// interval, e.g. `["/usr/local/bin/check-disk"]`.
    pub command: Vec<String>,
    /// Failing readings in a row before a check is reported failed (and the node drained).
    pub fail_after: u32,
    /// Passing readings in a row before it is reported recovered (and the node undrained).
    pub recover_after: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        // Agent86's own (`smart_agent86::HealthSettings::default`) are derived from these.
        Self {
            enabled: true,
            command: Vec::new(),
            fail_after: 3,
            recover_after: 5,
        }
    }
}

/// How the front-end gets a viewer's bytes from the distributor (`[frontend]` `progressive`
/// and `hls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// `302 Found` to the distributor the Control placed (the thesis's front-end): no video
    /// byte passes through the front-end, and a player whose distributor dies must come back
    /// to the front-end by itself: reconnect to the front-end's URL (not the redirected
    /// one) with `Range` at its next byte, and give up on a connection silent for a few
    /// seconds (a partitioned node's TCP connection only resumes at the sender's next
    /// retransmission, seconds after the network heals). Most players do neither.
    Redirect,
    /// The front-end fetches from the distributor and streams the body back; when that
    /// connection breaks or goes silent (node death, migration, partition) it locates the
    /// service again and resumes with `Range` at the exact byte, so the player sees one
    /// unbroken response. Costs the front-end a copy of every byte (CPU and network in and
    /// out) and the viewer a hop.
    Relay,
}

/// `[frontend]`: what the HTTP front-end asks admission for (`GET /watch/{video}`) and how
/// it delivers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrontendConfig {
    /// Command line of a video's distributor; `{origin}` is replaced by `origin`, `{video}`
    /// by the video name, and `{listen}` by the address Agent86 picks on its node.
    pub distributor_command: Vec<String>,
    /// The origin's URL, e.g. `http://10.0.0.1:8000`.
    pub origin: String,
    /// Bitrate of a video whose origin sends no `X-Bitrate`, bits/s (the per-client
    /// network increment); the origin's `X-Bitrate` wins when present.
    pub bitrate_bps: u64,
    /// How long the origin's answer about a video (its bitrate and duration, or that it has
    /// no such video) is kept before the next `HEAD` asks again.
    #[serde(with = "humantime_serde")]
    pub catalogue_ttl: Duration,
    /// The origin must answer a catalogue `HEAD` within this (else `502` to the viewer).
    #[serde(with = "humantime_serde")]
    pub origin_timeout: Duration,
    /// Admissions that may start a service (a video the front-end knows no placement of),
    /// per second and per client address: a token bucket's refill rate.
    pub new_services_per_sec: f64,
    /// The token bucket's size: a client address may start this many at once.
    pub new_services_burst: u32,
    /// Viewer admissions (every request that admits a client: a redirect, a relayed
    /// connection, a new HLS session), per second and per client address (IPv6 by /64): a
    /// token bucket's refill rate. A stranger's flood of `/watch` requests that never
    /// connect can then hold only a few reservations (see `timing.client_arrival_window`).
    pub viewer_admissions_per_sec: f64,
    /// That bucket's size: a client address may be admitted this many times at once.
    pub viewer_admissions_burst: u32,
    /// Viewer admissions per second of one video at this front-end, from all addresses.
    pub video_admissions_per_sec: f64,
    /// That bucket's size.
    pub video_admissions_burst: u32,
    /// Proxies in front of the front-end (addresses or CIDR blocks, e.g. `10.0.0.0/8`): a
    /// request from one of them is limited by the client address it names in
    /// `X-Forwarded-For` (the rightmost address that is not itself a trusted proxy), and
    /// the proxy's own connections are not capped per address. Empty (default): the
    /// connection's address is the client's, and `X-Forwarded-For` is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Progressive `GET /watch/{video}`: `relay` (default: an unmodified player keeps
    /// playing through its distributor's death or move) or `redirect`.
    pub progressive: Delivery,
    /// HLS segments `GET /watch/{video}/seg/{n}.ts`: `relay` (default) or `redirect`. The
    /// playlist is always served by the front-end, so that segment requests come back to it.
    pub hls: Delivery,
    /// An HLS session without a request for this long is released from admission. Shorter
    /// than the distributor's own session timeout (20 s), so that the front-end's precise
    /// release comes before the distributor's client count drops (which the Control also
    /// acts on, releasing the newest client of the service).
    #[serde(with = "humantime_serde")]
    pub hls_session_timeout: Duration,
    /// HLS sessions at most (a client opening sessions in a loop then gets 503).
    pub max_hls_sessions: usize,
    /// How long a relayed response keeps trying to reach the service again (node death,
    /// migration) before it gives up and closes the viewer's connection.
    #[serde(with = "humantime_serde")]
    pub relay_resume_deadline: Duration,
    /// Directory with the player page (`play.html`) and hls.js
    /// (`node_modules/hls.js/dist/hls.min.js`); relative to the config file. Default:
    /// `$SMART_UI_DIR`, else `vod/ui` of the source tree the binary was built from.
    pub player_dir: Option<PathBuf>,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        Self {
            distributor_command: [
                "vod",
                "distributor",
                "--listen",
                "{listen}",
                "--origin",
                "{origin}",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            origin: "http://127.0.0.1:8000".into(),
            bitrate_bps: 400_000,
            catalogue_ttl: Duration::from_secs(30),
            origin_timeout: Duration::from_secs(2),
            new_services_per_sec: 1.0,
            new_services_burst: 10,
            viewer_admissions_per_sec: 2.0,
            viewer_admissions_burst: 10,
            video_admissions_per_sec: 100.0,
            video_admissions_burst: 200,
            trusted_proxies: Vec::new(),
            progressive: Delivery::Relay,
            hls: Delivery::Relay,
            hls_session_timeout: Duration::from_secs(15),
            max_hls_sessions: 100_000,
            relay_resume_deadline: Duration::from_secs(20),
            player_dir: None,
        }
    }
}

/// The whole node configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique, stable node id (a positive integer).
    pub node_id: u64,
    /// Where the node persists its incarnation and the highest epoch it has seen.
    pub data_dir: PathBuf,
    /// TCP address bound for node-to-node traffic and the message API; the same address, in
    /// UDP, receives unicast heartbeats from nodes that list it as a seed. May be a wildcard
    /// (`0.0.0.0:7101`) only when `advertise` says what peers should use.
    pub listen: SocketAddr,
    /// The address peers are told (heartbeats, the Control's view, `smart status`): routable
    /// from the other hosts, never a wildcard. Default: `listen`.
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// The IP the instances this node starts bind and advertise (`{listen}`, their
    /// endpoints and the checkpoint export). Default: `advertise`'s IP.
    #[serde(default)]
    pub data_plane: Option<IpAddr>,
    /// File holding the shared cluster key (at least 16 bytes; surrounding whitespace ignored).
    pub cluster_key_file: PathBuf,
    /// This node's own X25519 private key (`smart keys` makes it): its identity on TCP.
    pub node_key_file: PathBuf,
    /// The members' public keys (`<node id> <hex>` per line, `smart keys` writes it): a
    /// peer is believed to be node N only if it proves N's key.
    pub node_public_keys_file: PathBuf,
    /// Roles of this node. Default: agent and control.
    #[serde(default = "default_roles")]
    pub roles: Vec<Role>,
    /// Other nodes' `listen` addresses: heartbeats are also sent there by unicast UDP, for
    /// networks without multicast or as a fallback.
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    /// Heartbeat multicast channel.
    #[serde(default)]
    pub multicast: MulticastConfig,
    /// Timings.
    #[serde(default)]
    pub timing: TimingConfig,
    /// Election mode.
    #[serde(default)]
    pub election: ElectionConfig,
    /// Restart policy.
    #[serde(default)]
    pub supervision: SupervisionConfig,
    /// TCP connection admission.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Heartbeat keys and encryption.
    #[serde(default)]
    pub heartbeat: HeartbeatConfig,
    /// Front-end HTTP address (`GET /watch/{video}`), for nodes with the front-end role.
    #[serde(default)]
    pub frontend_http: Option<SocketAddr>,
    /// NIC bandwidth this node offers to services, in bits per second.
    #[serde(default = "default_nic_bps")]
    pub nic_bps: u64,
    /// Agent86.
    #[serde(default)]
    pub agent: AgentConfig,
    /// The HTTP front-end's service template.
    #[serde(default)]
    pub frontend: FrontendConfig,
    /// Admission, reservations and limits (read by the node when it is the Control).
    #[serde(default)]
    pub admission: AdmissionConfig,
    /// Node health checks.
    #[serde(default)]
    pub health: HealthConfig,
    /// Address of the operator's HTTP/JSON API (`/v1`), `/metrics` and the dashboard
    /// (`/ui`); none when unset.
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
    /// API tokens for `http_listen` (see `smart tokens new`); without it every `/v1` request
    /// is refused with 401.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// TLS for `http_listen`: when set, the API, `/metrics` and the dashboard are served
    /// over HTTPS only (see `smart tls`).
    #[serde(default)]
    pub http_tls: Option<HttpTlsConfig>,
}

/// `[http_tls]`: the HTTP API's certificate (PEM files, relative to the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsConfig {
    /// This node's certificate chain (its own certificate first).
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, SEC1 or PKCS#1); refused when group or others may read it.
    pub key_file: PathBuf,
    /// The CA certificate(s) that `smart` commands given this config (`--config`) trust
    /// for the cluster's nodes; without it, the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_roles() -> Vec<Role> {
    vec![Role::Agent, Role::Control]
}

fn default_nic_bps() -> u64 {
    1_000_000_000
}

impl NodeConfig {
    /// The command prefixes instances may run here: `[agent] allowed_commands`, and the
    /// front-end's `distributor_command` up to its first `{placeholder}` (the operator
    /// named it to be run).
    pub fn allowed_commands(&self) -> Vec<Vec<String>> {
        let mut allowed = self.agent.allowed_commands.clone();
        let own: Vec<String> = self
            .frontend
            .distributor_command
            .iter()
            .take_while(|w| !w.contains('{'))
            .cloned()
            .collect();
        if !own.is_empty() && !allowed.contains(&own) {
            allowed.push(own);
        }
        allowed
    }
    /// Reads, parses, resolves relative paths and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        if cfg.data_dir.is_relative() {
            cfg.data_dir = base.join(&cfg.data_dir);
        }
        if let Some(k) = cfg.heartbeat.keys_file.as_mut()
            && k.is_relative()
        {
            *k = base.join(&*k);
        }
        for p in [
            &mut cfg.cluster_key_file,
            &mut cfg.node_key_file,
            &mut cfg.node_public_keys_file,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = &cfg.admission.default_profile
            && p.is_relative()
        {
            cfg.admission.default_profile = Some(base.join(p));
        }
        if let Some(t) = cfg.tokens_file.as_mut().filter(|t| t.is_relative()) {
            *t = base.join(&*t);
        }
        if let Some(tls) = cfg.http_tls.as_mut() {
            for p in [&mut tls.cert_file, &mut tls.key_file]
                .into_iter()
                .chain(tls.ca_file.as_mut())
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        if let Some(d) = cfg.frontend.player_dir.as_mut()
            && d.is_relative()
        {
            *d = base.join(&*d);
        }
        Ok(cfg)
    }

    /// Parses and validates config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        NodeId(self.node_id)
    }

    /// True when the node has `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &'static str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            reason,
        };
        if self.node_id == 0 {
            return Err(bad("node_id", "must be a positive integer".into()));
        }
        if self.listen.port() == 0 {
            return Err(bad(
                "listen",
                "needs a fixed port: other nodes list it as a seed".into(),
            ));
        }
        match self.advertise {
            None if self.listen.ip().is_unspecified() => {
                return Err(bad(
                    "advertise",
                    format!(
                        "`listen` {} is a wildcard: set `advertise` to the address the other hosts reach this node at",
                        self.listen
                    ),
                ));
            }
            Some(a) if a.ip().is_unspecified() => {
                return Err(bad(
                    "advertise",
                    format!("{a} is a wildcard: peers cannot reach it; give a routable address"),
                ));
            }
            Some(a) if a.port() == 0 => {
                return Err(bad(
                    "advertise",
                    "needs a fixed port: other nodes list it as a seed".into(),
                ));
            }
            _ => {}
        }
        if let Some(ip) = self.data_plane
            && ip.is_unspecified()
        {
            return Err(bad(
                "data_plane",
                format!(
                    "{ip} is a wildcard: viewers and other hosts cannot reach instances there; give this host's routable IP"
                ),
            ));
        }
        if self.roles.is_empty() {
            return Err(bad("roles", "at least one role is required".into()));
        }
        if self.multicast.enabled && !self.multicast.group.is_multicast() {
            return Err(bad(
                "multicast.group",
                format!("{} is not an IPv4 multicast address", self.multicast.group),
            ));
        }
        if self.multicast.enabled && self.multicast.port == 0 {
            return Err(bad("multicast.port", "must not be 0".into()));
        }
        if self.multicast.enabled && self.multicast.interface.trim().is_empty() {
            return Err(bad(
                "multicast.interface",
                "name the interface (e.g. eth0 or 10.0.0.1)".into(),
            ));
        }
        if !self.multicast.enabled && self.seeds.is_empty() {
            return Err(bad(
                "seeds",
                "with multicast disabled, at least one seed is needed".into(),
            ));
        }
        if self.multicast.ttl == 0 || self.multicast.ttl > 255 {
            return Err(bad("multicast.ttl", "must be in 1..=255".into()));
        }
        let t = &self.timing;
        if t.heartbeat_interval.is_zero() {
            return Err(bad("timing.heartbeat_interval", "must be > 0".into()));
        }
        if t.dead_after < t.heartbeat_interval * 2 {
            return Err(bad(
                "timing.dead_after",
                format!(
                    "{:?} is less than two heartbeat intervals ({:?}): every member would flap",
                    t.dead_after, t.heartbeat_interval
                ),
            ));
        }
        if t.request_timeout.is_zero() {
            return Err(bad("timing.request_timeout", "must be > 0".into()));
        }
        let d = t.derived();
        if d.request_budget < d.start {
            return Err(bad(
                "timing.request_budget",
                format!(
                    "{:?} is less than a service start's timeout ({:?} = 5 × request_timeout): \
                     a video's first viewer would always time out while its service starts",
                    d.request_budget, d.start
                ),
            ));
        }
        if self.election.members.is_empty() {
            return Err(bad(
                "election.members",
                "list the node ids of every cluster member, e.g. [1, 2, 3]: datagrams from other ids are refused".into(),
            ));
        }
        if !self.election.members.contains(&self.node_id) {
            return Err(bad(
                "election.members",
                format!("does not contain this node's id {}", self.node_id),
            ));
        }
        if self.election.max_epoch_step == 0 {
            return Err(bad("election.max_epoch_step", "must be > 0".into()));
        }
        if t.forget_after < t.dead_after {
            return Err(bad(
                "timing.forget_after",
                "must be at least timing.dead_after".into(),
            ));
        }
        let l = &self.limits;
        if l.max_connections == 0
            || l.max_connections_per_addr == 0
            || l.max_handshaking == 0
            || l.max_handshaking_per_addr == 0
            || l.handshake_timeout.is_zero()
            || l.client_idle_timeout.is_zero()
        {
            return Err(bad("limits", "every limit must be > 0".into()));
        }
        if self.supervision.max_restarts == 0 || self.supervision.within.is_zero() {
            return Err(bad(
                "supervision",
                "max_restarts and within must be > 0".into(),
            ));
        }
        if self.agent.sample_interval.is_zero() {
            return Err(bad("agent.sample_interval", "must be > 0".into()));
        }
        let a = &self.admission;
        if !(a.confidence > 0.0 && a.confidence < 1.0) {
            return Err(bad("admission.confidence", "must be in (0, 1)".into()));
        }
        if !(a.vr > 0.0 && a.vr <= 1.0) {
            return Err(bad("admission.vr", "must be in (0, 1]".into()));
        }
        if !(a.reserve_quantile > 0.0 && a.reserve_quantile <= 1.0) {
            return Err(bad(
                "admission.reserve_quantile",
                "must be in (0, 1]".into(),
            ));
        }
        if !(2..=100_000).contains(&a.grid) {
            return Err(bad("admission.grid", "must be in 2..=100000".into()));
        }
        if !(a.cpu_headroom >= 1.0 && a.cpu_headroom.is_finite()) {
            return Err(bad(
                "admission.cpu_headroom",
                "must be ≥ 1 (a limit below the reservation starves what was admitted)".into(),
            ));
        }
        if !(a.mem_headroom >= 1.0 && a.mem_headroom.is_finite()) {
            return Err(bad(
                "admission.mem_headroom",
                "must be ≥ 1 (a limit below the reservation kills what was admitted)".into(),
            ));
        }
        if a.refine_window == 0 || a.refine_min_samples > a.refine_window {
            return Err(bad(
                "admission.refine_min_samples",
                "must be ≤ refine_window, which must be > 0".into(),
            ));
        }
        if !(a.refine_change > 0.0 && a.refine_change.is_finite()) {
            return Err(bad("admission.refine_change", "must be > 0".into()));
        }
        if self.health.fail_after == 0 || self.health.recover_after == 0 {
            return Err(bad(
                "health",
                "fail_after and recover_after must be ≥ 1".into(),
            ));
        }
        if self.has_role(Role::FrontEnd) && self.frontend.distributor_command.is_empty() {
            return Err(bad(
                "frontend.distributor_command",
                "must name the distributor program".into(),
            ));
        }
        if self.http_tls.is_some() && self.http_listen.is_none() {
            return Err(bad(
                "http_tls",
                "is for the HTTP API: set http_listen too".into(),
            ));
        }
        if let Some(h) = self.http_listen {
            if h.port() == 0 {
                return Err(bad(
                    "http_listen",
                    "needs a fixed port: other nodes and tools are told it".into(),
                ));
            }
            if h == self.listen || Some(h) == self.frontend_http {
                return Err(bad(
                    "http_listen",
                    format!("{h} is already used by `listen` or `frontend_http`"),
                ));
            }
        }
        if self.frontend.hls_session_timeout < Duration::from_secs(2) {
            return Err(bad(
                "frontend.hls_session_timeout",
                "must be at least 2 s (a player asks for a segment every few seconds)".into(),
            ));
        }
        if self.frontend.max_hls_sessions == 0 {
            return Err(bad("frontend.max_hls_sessions", "must be > 0".into()));
        }
        if self.frontend.relay_resume_deadline.is_zero() {
            return Err(bad("frontend.relay_resume_deadline", "must be > 0".into()));
        }
        if self.frontend.origin_timeout.is_zero() {
            return Err(bad("frontend.origin_timeout", "must be > 0".into()));
        }
        let f = &self.frontend;
        for (rate, burst, keys) in [
            (
                f.new_services_per_sec,
                f.new_services_burst,
                [
                    "frontend.new_services_per_sec",
                    "frontend.new_services_burst",
                ],
            ),
            (
                f.viewer_admissions_per_sec,
                f.viewer_admissions_burst,
                [
                    "frontend.viewer_admissions_per_sec",
                    "frontend.viewer_admissions_burst",
                ],
            ),
            (
                f.video_admissions_per_sec,
                f.video_admissions_burst,
                [
                    "frontend.video_admissions_per_sec",
                    "frontend.video_admissions_burst",
                ],
            ),
        ] {
            if !rate.is_finite() || rate <= 0.0 {
                return Err(bad(keys[0], format!("{rate} is not a positive rate")));
            }
            if burst == 0 {
                return Err(bad(keys[1], "must be at least 1".into()));
            }
        }
        if self.timing.client_arrival_window.is_zero() {
            return Err(bad("timing.client_arrival_window", "must be > 0".into()));
        }
        if self.has_role(Role::FrontEnd) && self.frontend_http.is_none() {
            return Err(bad(
                "frontend_http",
                "nodes with the front-end role need an HTTP address".into(),
            ));
        }
        Ok(())
    }

    /// Base URL of this node's HTTP API (`http://ip:port`, or `https://` with
    /// `[http_tls]`), when it serves one.
    pub fn http_url(&self) -> Option<String> {
        let scheme = if self.http_tls.is_some() {
            "https"
        } else {
            "http"
        };
        self.http_listen.map(|a| format!("{scheme}://{a}"))
    }

    /// The IP heartbeats are sent from when the interface is given by address (the
    /// advertised one: `listen` may be a wildcard).
    pub fn listen_ip(&self) -> IpAddr {
        self.advertise_addr().ip()
    }

    /// What peers are told: `advertise`, else `listen`.
    pub fn advertise_addr(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.listen)
    }

    /// The IP this node's instances bind and advertise: `data_plane`, else the advertised IP.
    pub fn data_plane_ip(&self) -> IpAddr {
        self.data_plane
            .unwrap_or_else(|| self.advertise_addr().ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
node_id = 1
data_dir = "data"
listen = "127.0.0.1:7101"
cluster_key_file = "cluster.key"
node_key_file = "n1.key"
node_public_keys_file = "nodes.pub"

[election]
members = [1, 2, 3]
"#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = NodeConfig::parse(MINIMAL, Path::new("n1.toml")).unwrap();
        assert_eq!(c.id(), NodeId(1));
        assert_eq!(c.timing.heartbeat_interval, Duration::from_millis(100));
        assert!(c.timing.dead_after <= Duration::from_millis(500));
        assert_eq!(c.election.mode, ElectionMode::Available);
        assert_eq!(c.roles, vec![Role::Agent, Role::Control]);
        assert!(c.multicast.enabled);
    }

    #[test]
    fn frontend_delivery_modes() {
        let c = NodeConfig::parse(MINIMAL, Path::new("n1.toml")).unwrap();
        assert_eq!(c.frontend.progressive, Delivery::Relay);
        assert_eq!(c.frontend.hls, Delivery::Relay);
        let text = format!(
            "{MINIMAL}[frontend]\nprogressive = \"redirect\"\nhls = \"redirect\"\nhls_session_timeout = \"30s\"\nplayer_dir = \"ui\"\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n1.toml");
        std::fs::write(&path, text).unwrap();
        let c = NodeConfig::load(&path).unwrap();
        assert_eq!(c.frontend.progressive, Delivery::Redirect);
        assert_eq!(c.frontend.hls, Delivery::Redirect);
        assert_eq!(c.frontend.hls_session_timeout, Duration::from_secs(30));
        assert_eq!(c.frontend.player_dir, Some(dir.path().join("ui")));
        for (bad, key) in [
            ("hls = \"teleport\"", "teleport"),
            ("hls_session_timeout = \"1s\"", "hls_session_timeout"),
            ("max_hls_sessions = 0", "max_hls_sessions"),
        ] {
            let err = NodeConfig::parse(
                &format!("{MINIMAL}[frontend]\n{bad}\n"),
                Path::new("n1.toml"),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn addresses_bind_advertise_and_data_plane() {
        let parse = |extra: &str, listen: &str| {
            let text = MINIMAL.replace(
                "listen = \"127.0.0.1:7101\"",
                &format!("listen = \"{listen}\"\n{extra}"),
            );
            NodeConfig::parse(&text, Path::new("n1.toml"))
        };
        // Defaults: peers are told `listen`, instances use its IP.
        let c = parse("", "10.0.0.1:7101").unwrap();
        assert_eq!(c.advertise_addr(), "10.0.0.1:7101".parse().unwrap());
        assert_eq!(c.data_plane_ip(), "10.0.0.1".parse::<IpAddr>().unwrap());
        // A wildcard bind with a routable advertise; the data plane follows advertise.
        let c = parse("advertise = \"10.0.0.1:7101\"", "0.0.0.0:7101").unwrap();
        assert_eq!(c.listen, "0.0.0.0:7101".parse().unwrap());
        assert_eq!(c.advertise_addr(), "10.0.0.1:7101".parse().unwrap());
        assert_eq!(c.listen_ip(), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(c.data_plane_ip(), "10.0.0.1".parse::<IpAddr>().unwrap());
        // A separate data-plane network.
        let c = parse(
            "advertise = \"10.0.0.1:7101\"\ndata_plane = \"192.168.5.1\"",
            "0.0.0.0:7101",
        )
        .unwrap();
        assert_eq!(c.data_plane_ip(), "192.168.5.1".parse::<IpAddr>().unwrap());
        // Refused, each naming its key.
        for (extra, listen, key, says) in [
            ("", "0.0.0.0:7101", "advertise", "wildcard"),
            ("", "[::]:7101", "advertise", "wildcard"),
            (
                "advertise = \"0.0.0.0:7101\"",
                "0.0.0.0:7101",
                "advertise",
                "wildcard",
            ),
            (
                "advertise = \"10.0.0.1:0\"",
                "0.0.0.0:7101",
                "advertise",
                "fixed port",
            ),
            (
                "data_plane = \"0.0.0.0\"",
                "10.0.0.1:7101",
                "data_plane",
                "wildcard",
            ),
        ] {
            let err = parse(extra, listen).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains(says),
                "{extra} {listen}: {err}"
            );
        }
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let text = format!("{MINIMAL}\nheartbeat_intervall = \"1s\"\n");
        let err = NodeConfig::parse(&text, Path::new("conf/n1.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("conf/n1.toml"), "{err}");
        assert!(err.contains("heartbeat_intervall"), "{err}");
    }

    #[test]
    fn bad_type_names_line() {
        let text = MINIMAL.replace("node_id = 1", "node_id = \"one\"");
        let err = NodeConfig::parse(&text, Path::new("n1.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("n1.toml") && err.contains("node_id"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let cases = [
            (MINIMAL.replace("node_id = 1", "node_id = 0"), "node_id"),
            (
                format!("{MINIMAL}[multicast]\ngroup = \"10.0.0.1\"\n"),
                "multicast.group",
            ),
            (
                format!("{MINIMAL}max_epoch_step = 0\n"),
                "election.max_epoch_step",
            ),
            (
                MINIMAL.replace(
                    "[election]",
                    "[timing]\nheartbeat_interval = \"1s\"\ndead_after = \"1s\"\n[election]",
                ),
                "timing.dead_after",
            ),
            (
                MINIMAL.replace("members = [1, 2, 3]", "members = []"),
                "election.members",
            ),
            (
                MINIMAL.replace("members = [1, 2, 3]", "members = [2, 3]"),
                "election.members",
            ),
            (
                MINIMAL.replace(
                    "[election]",
                    "[timing]\nrequest_timeout = \"soon\"\n[election]",
                ),
                "request_timeout",
            ),
            (
                MINIMAL.replace(
                    "[election]",
                    "[timing]\nrequest_timeout = \"2s\"\nrequest_budget = \"9s\"\n[election]",
                ),
                "timing.request_budget",
            ),
            (
                format!("{MINIMAL}[frontend]\nnew_services_per_sec = 0.0\n"),
                "frontend.new_services_per_sec",
            ),
            (
                format!("{MINIMAL}[frontend]\nnew_services_per_sec = -1.5\n"),
                "frontend.new_services_per_sec",
            ),
            (
                format!("{MINIMAL}[frontend]\nnew_services_per_sec = nan\n"),
                "frontend.new_services_per_sec",
            ),
            (
                format!("{MINIMAL}[frontend]\nviewer_admissions_per_sec = 0.0\n"),
                "frontend.viewer_admissions_per_sec",
            ),
            (
                format!("{MINIMAL}[frontend]\nvideo_admissions_burst = 0\n"),
                "frontend.video_admissions_burst",
            ),
            (
                format!("{MINIMAL}[frontend]\ntrusted_proxies = [\"10.0.0.0/33\"]\n"),
                "trusted_proxies",
            ),
            (
                format!("{MINIMAL}[frontend]\nnew_services_burst = 0\n"),
                "frontend.new_services_burst",
            ),
            (
                format!("{MINIMAL}[frontend]\norigin_timeout = \"0s\"\n"),
                "frontend.origin_timeout",
            ),
        ];
        for (text, key) in cases {
            let err = NodeConfig::parse(&text, Path::new("x.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("x.toml"), "{key}: {err}");
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n1.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let c = NodeConfig::load(&path).unwrap();
        assert_eq!(c.data_dir, dir.path().join("data"));
        assert_eq!(c.cluster_key_file, dir.path().join("cluster.key"));
        assert_eq!(c.node_key_file, dir.path().join("n1.key"));
        assert_eq!(c.node_public_keys_file, dir.path().join("nodes.pub"));
    }

    #[test]
    fn shipped_example_configs_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut seen = 0;
        for entry in [
            "example.toml",
            "loopback-3/n1.toml",
            "loopback-3/n2.toml",
            "loopback-3/n3.toml",
        ] {
            let p = root.join(entry);
            NodeConfig::load(&p).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
        assert_eq!(seen, 4);
    }

    #[test]
    fn every_request_timeout_derives_from_the_request_timeout_and_the_budget() {
        let c = NodeConfig::parse(MINIMAL, Path::new("n1.toml")).unwrap();
        assert_eq!(
            c.timing.derived(),
            DerivedTimings {
                request_budget: Duration::from_secs(10),
                exchange: Duration::from_secs(2),
                start: Duration::from_secs(10),
                migrate_out: Duration::from_secs(20),
                migrate_in: Duration::from_secs(60),
            }
        );
        let text = MINIMAL.replace(
            "[election]",
            "[timing]\nrequest_timeout = \"1s\"\nrequest_budget = \"12s\"\n[election]",
        );
        let c = NodeConfig::parse(&text, Path::new("n1.toml")).unwrap();
        let d = c.timing.derived();
        assert_eq!(d.request_budget, Duration::from_secs(12));
        assert_eq!(d.start, Duration::from_secs(5));
        assert_eq!(d.migrate_in, Duration::from_secs(30));
    }
}
