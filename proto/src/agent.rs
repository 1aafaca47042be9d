//! The Control ↔ Agent86 vocabulary (docs/DESIGN.md §1, §2.4): the commands a Control sends
//! an agent, the agent's replies, its state report (what a new Control rebuilds from) and the
//! events it raises. The Agent86 engine (`smart-agent86`) consumes [`AgentCommand`] as it
//! arrives off the wire and produces [`AgentReply`] and [`AgentReport`] itself: there is no
//! second, internal copy of these types.

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, NodeId, ServiceName};

/// Resources set aside for an instance or a pending arrival.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Reservation {
    /// CPU, cores.
    pub cpu_cores: f64,
    /// Network, bits/s.
    pub net_bps: f64,
    /// Memory working set, bytes.
    pub mem_bytes: u64,
}

impl Reservation {
    /// Adds `o` to `self`.
    pub fn add(&mut self, o: &Reservation) {
        self.cpu_cores += o.cpu_cores;
        self.net_bps += o.net_bps;
        self.mem_bytes = self.mem_bytes.saturating_add(o.mem_bytes);
    }
}

/// Which admitted service an instance runs, as the Control admitted it: what a new Control
/// rebuilds its service table from (with the launch's class, command and environment). The
/// agent keeps it and reports it back untouched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceIdentity {
    /// The service's name.
    pub name: ServiceName,
    /// Per-client network increment, bits/s (the video bitrate), when it has clients.
    pub per_client_bps: Option<u64>,
    /// Length of what it serves (a distributor's video), milliseconds.
    pub duration_ms: Option<u64>,
}

/// How to run an instance.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Service class, the key of its profile.
    pub service: String,
    /// The admitted service it runs, when the Control started it (`None` for instances
    /// started otherwise, e.g. by a test or the profiler). (Boxed: commands carry it, and
    /// most commands are far smaller.)
    pub identity: Option<Box<ServiceIdentity>>,
    /// Program and arguments. `{listen}` is replaced by an address the agent picks on its
    /// node (`ip:port`; the agent keeps the port bound, never listening, until the instance
    /// accepts on it, so the instance must bind with `SO_REUSEADDR`, as servers do); the
    /// instance's endpoint is then `http://{listen}/`.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// CPU cap in cores.
    pub cpu_cores: Option<f64>,
    /// Memory cap in bytes.
    pub memory_bytes: Option<u64>,
}

/// Where a migration target on another host pulls the source instance's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceExport {
    /// The source agent's export, `ip:port` (its node's data-plane address).
    pub addr: String,
    /// The source instance.
    pub instance: String,
}

/// A command from a Control to an Agent86. Every command travels with the Control's epoch
/// and is fenced by it when it *executes* (docs/DESIGN.md §2.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentCommand {
    /// Send your state (instances and their reservations, usage); used to rebuild and to
    /// refresh.
    Report,
    /// Start an instance with its reservation.
    Start {
        /// Instance name (unique in the cluster; `[A-Za-z0-9_.-]`).
        instance: String,
        /// How to run it.
        launch: LaunchSpec,
        /// What admission reserved for it.
        reservation: Reservation,
    },
    /// Stop an instance (graceful, then forced) and release its reservation.
    Stop {
        /// Instance name.
        instance: String,
    },
    /// Hand the instance's clients to `target_url` (workload control API `handoff`), then
    /// stop it here.
    MigrateOut {
        /// Instance name.
        instance: String,
        /// Target node.
        target: NodeId,
        /// Endpoint of the new instance, where clients are redirected.
        target_url: String,
    },
    /// Start an instance that first copies the state of its source while the source keeps
    /// serving: pre-copy. On the source's host (same data-plane address) the new instance
    /// `restore`s straight from `source_control`; from another host the agent pulls the
    /// checkpoint from the source agent's export at `source_export` over TCP, authenticated
    /// with the cluster key (`crate::pull`), and relays it to the new instance.
    MigrateIn {
        /// Instance name.
        instance: String,
        /// How to run it.
        launch: LaunchSpec,
        /// Its reservation here.
        reservation: Reservation,
        /// Source node.
        source: NodeId,
        /// The source instance's workload control socket (same-host fast path).
        source_control: String,
        /// The source agent's checkpoint export (`ip:port` on its data-plane address), when
        /// it has one: the path from another host.
        /// (Boxed: most commands are far smaller.)
        source_export: Option<Box<SourceExport>>,
        /// Cap on the copy's rate, bits/s (the copy shares the network with the viewers).
        copy_rate_bps: Option<u64>,
    },
    /// A running instance's reservation (and the limits derived from it) changed: its
    /// clients changed, or its profile was refined or grown.
    Update {
        /// Instance name.
        instance: String,
        /// The new reservation.
        reservation: Reservation,
        /// CPU cap in cores.
        cpu_cores: Option<f64>,
        /// Memory cap in bytes.
        memory_bytes: Option<u64>,
    },
}

/// [`AgentCommand::timeout_multiple`] of `Start` and `Stop`.
pub const START_TIMEOUT_MULTIPLE: u32 = 5;
/// [`AgentCommand::timeout_multiple`] of `MigrateOut`.
pub const MIGRATE_OUT_TIMEOUT_MULTIPLE: u32 = 10;
/// [`AgentCommand::timeout_multiple`] of `MigrateIn`.
pub const MIGRATE_IN_TIMEOUT_MULTIPLE: u32 = 30;

impl AgentCommand {
    /// How long the command may take, in request timeouts: what the Control waits for its
    /// answer and what the agent's node lets it run (a restore copies a whole cache, across
    /// hosts at a capped rate; a hand-over waits for every viewer to be told).
    pub fn timeout_multiple(&self) -> u32 {
        match self {
            AgentCommand::MigrateIn { .. } => MIGRATE_IN_TIMEOUT_MULTIPLE,
            AgentCommand::MigrateOut { .. } => MIGRATE_OUT_TIMEOUT_MULTIPLE,
            AgentCommand::Start { .. } | AgentCommand::Stop { .. } => START_TIMEOUT_MULTIPLE,
            AgentCommand::Report | AgentCommand::Update { .. } => 1,
        }
    }

    /// The instance the command is about, if any.
    pub fn instance(&self) -> Option<&str> {
        match self {
            AgentCommand::Start { instance, .. }
            | AgentCommand::Stop { instance }
            | AgentCommand::MigrateOut { instance, .. }
            | AgentCommand::MigrateIn { instance, .. }
            | AgentCommand::Update { instance, .. } => Some(instance),
            AgentCommand::Report => None,
        }
    }
}

/// Why an agent did not carry out a command (other than a stale epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AgentError {
    /// No such instance here.
    #[error("no such instance")]
    UnknownInstance,
    /// Already running here.
    #[error("already exists")]
    AlreadyExists,
    /// Busy with another operation on that instance.
    #[error("busy with another operation")]
    Busy,
    /// The runtime or the workload failed.
    #[error("{0}")]
    Failed(String),
}

/// An agent's answer to an [`AgentCommand`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentReply {
    /// Answer to `Report` (boxed: a report is much larger than the other answers).
    Report(Box<AgentReport>),
    /// A started, migrated-in or otherwise changed instance, as it is now (boxed: large).
    Instance(Box<InstanceReport>),
    /// Done, nothing to report (stop, a finished migration).
    Done,
    /// The command's epoch was below the highest the agent has seen: its sender is stale.
    Refused {
        /// The command's epoch.
        epoch: Epoch,
        /// The agent's highest epoch.
        highest: Epoch,
    },
    /// The command failed.
    Failed(AgentError),
}

/// One instance's usage over one interval (from the sampler).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct UsageReading {
    /// Instance name.
    pub instance: String,
    /// Cores used.
    pub cpu_cores: f64,
    /// Network, bits/s (`None` when not measurable).
    pub net_bps: Option<f64>,
    /// Working set, bytes.
    pub mem_bytes: u64,
    /// Clients served, when the instance reports them.
    pub clients: Option<u32>,
    /// The instance answers the workload control API (it can be live-migrated).
    pub speaks_api: bool,
}

/// Node-level usage for the state report.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeUsage {
    /// CPUs online.
    pub cpus: u32,
    /// Cores busy.
    pub cpu_busy_cores: f64,
    /// Memory capacity.
    pub mem_total_bytes: u64,
    /// Memory available.
    pub mem_available_bytes: u64,
    /// NIC capacity, bits/s.
    pub nic_capacity_bps: u64,
    /// Node traffic, bits/s.
    pub net_bps: f64,
}

/// A resource that can be over its reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Resource {
    /// CPU.
    Cpu,
    /// Network.
    Net,
    /// Memory.
    Memory,
}

/// How an instance's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Terminating signal, when killed.
    pub signal: Option<i32>,
    /// The kernel OOM killer fired in its group (cgroup driver).
    pub oom_killed: bool,
}

impl ExitInfo {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Events an agent raises for the Control (listed in its reports as numbered notices).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentEvent {
    /// Persistently over its reservation (thesis §4.1.1).
    Anomaly {
        /// Instance.
        instance: String,
        /// Resource.
        resource: Resource,
        /// Mean of the offending samples.
        observed: f64,
        /// Reserved amount.
        reserved: f64,
    },
    /// Back under its reservation.
    AnomalyCleared {
        /// Instance.
        instance: String,
        /// Resource.
        resource: Resource,
    },
    /// A health check changed state.
    NodeHealth {
        /// Check name (`memory_available`, `memory_pressure`, `thermal:<zone>`).
        check: String,
        /// True when fine.
        healthy: bool,
        /// Reading that decided it.
        detail: String,
    },
    /// Crashed and was restarted.
    InstanceRestarted {
        /// Instance.
        instance: String,
        /// Restarts within the window so far.
        attempt: u32,
        /// How it ended.
        exit: ExitInfo,
    },
    /// Crashed too often: given up, resources released.
    InstanceFailed {
        /// Instance.
        instance: String,
        /// Restarts made in the window.
        restarts: u32,
        /// How it ended last.
        exit: ExitInfo,
    },
    /// Ended by itself with success; resources released.
    InstanceFinished {
        /// Instance.
        instance: String,
    },
}

/// Life-cycle state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Start issued, not confirmed.
    Starting,
    /// Running.
    Running,
    /// Stop issued.
    Stopping,
    /// Hand-over in progress.
    MigratingOut,
}

/// One instance in an [`AgentReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceReport {
    /// Instance name.
    pub instance: String,
    /// How it was launched (the command before `{listen}` was replaced): enough for a new
    /// Control to start it elsewhere.
    pub launch: LaunchSpec,
    /// Life-cycle state.
    pub state: InstanceState,
    /// Its reservation.
    pub reservation: Reservation,
    /// Where clients connect, when it has a `{listen}` address.
    pub endpoint: Option<String>,
    /// Its workload control socket.
    pub control_socket: String,
    /// Where other hosts pull its checkpoint (`ip:port`: its agent's export on the node's
    /// data-plane address), when the agent exports.
    pub checkpoint_export: Option<String>,
    /// The instance answers the workload control API: it can be live-migrated. Otherwise it
    /// can only be restarted elsewhere.
    pub speaks_api: bool,
    /// Last usage sample.
    pub usage: Option<UsageReading>,
    /// Crash restarts within the current window.
    pub restarts: u32,
    /// Resources currently flagged over reservation.
    pub anomalous: Vec<Resource>,
    /// Limits derived from its reservation are enforced (cgroup driver).
    pub limits_enforced: bool,
}

/// What an Agent86 knows, for a Control to rebuild from (thesis §4.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AgentReport {
    /// The reporting node.
    pub node: NodeId,
    /// Highest epoch it has seen.
    pub highest_epoch: Epoch,
    /// Its instances, by name.
    pub instances: Vec<InstanceReport>,
    /// Sum of its instances' reservations.
    pub reserved_total: Reservation,
    /// Last node usage (CPUs, memory, NIC capacity and traffic).
    pub usage: Option<NodeUsage>,
    /// The last commands it executed, oldest first: `(epoch, control node)`. Lets tests
    /// and operators check from outside that executed epochs never go down.
    pub recent_commands: Vec<(Epoch, NodeId)>,
    /// Commands refused because their epoch was below the highest seen.
    pub refused_stale: u64,
    /// The last events for the Control (crashes, restarts, anomalies, health), numbered
    /// from 1 in this agent's life; a Control acts on those above the last number it saw.
    pub notices: Vec<(u64, AgentEvent)>,
    /// Health checks failing now (past their hysteresis): `(check, detail)`. Level, not
    /// edge: a new Control sees a sick node without having seen the notice.
    pub failing_checks: Vec<(String, String)>,
}

impl AgentReport {
    /// The instance called `name`, if this agent runs it.
    pub fn instance(&self, name: &str) -> Option<&InstanceReport> {
        self.instances.iter().find(|i| i.instance == name)
    }
}
