//! Node-to-node requests and responses, carried in the transport's envelope body.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use smart_supervision::{Epoch, NodeId};

pub use smart_instance::agent86::{
    AgentEvent, InstanceState, LaunchSpec, NodeUsage, Reservation, UsageReading,
};

/// A command from a Control to an Agent86. Every command is fenced by its epoch when it
/// executes (DESIGN §2.4). The operations map one to one onto
/// `smart_instance::agent86::ControlOp`; the extra fields are what the node shell needs to
/// reach the workload control API (socket paths, URLs), which the pure engine never sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentCommand {
    /// Send your state (instances, reservations, usage); used to rebuild and to refresh.
    Report,
    /// Start an instance. In `launch.command`, `{listen}` is replaced by an address the agent
    /// picks on its node (`ip:port`); the instance's endpoint is then `http://{listen}/`.
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
    /// Set resources aside under `id` (e.g. on a migration target).
    Reserve {
        /// Reservation id.
        id: String,
        /// Amount.
        reservation: Reservation,
    },
    /// Drop a reservation (idempotent).
    Release {
        /// Reservation id.
        id: String,
    },
    /// Hand the instance's clients to `target_url` (workload control API `handoff`), then
    /// stop it here.
    MigrateOut {
        /// Instance name.
        instance: String,
        /// Target node.
        target: u64,
        /// Endpoint of the new instance, where clients are redirected.
        target_url: String,
    },
    /// Start an instance that first copies the state of its source (workload control API
    /// `restore` from `source_control`) while the source keeps serving: pre-copy.
    MigrateIn {
        /// Instance name.
        instance: String,
        /// How to run it.
        launch: LaunchSpec,
        /// Its reservation here.
        reservation: Reservation,
        /// Source node.
        source: u64,
        /// Control socket of the source instance.
        source_control: String,
        /// Reservation made earlier for it, consumed on success.
        reserved_as: Option<String>,
    },
}

/// One service in the Control's replicated registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaEntry {
    /// What to run.
    pub spec: smart_api::ServiceSpec,
    /// Where it ran.
    pub node: u64,
    /// Clients admitted.
    pub clients: u64,
}

/// One instance in an [`AgentReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceInfo {
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
    /// The instance listens on its control socket: it can be live-migrated. Otherwise it
    /// can only be restarted elsewhere.
    pub speaks_api: bool,
    /// Last usage sample.
    pub usage: Option<UsageReading>,
    /// Crash restarts within the current window.
    pub restarts: u32,
}

/// What an Agent86 knows, for a Control to rebuild from (thesis §4.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AgentReport {
    /// The reporting node.
    pub node: u64,
    /// Its instances, by name.
    pub instances: Vec<InstanceInfo>,
    /// Open reservations.
    pub reservations: Vec<(String, Reservation)>,
    /// Last node usage (CPUs, memory, NIC capacity and traffic).
    pub usage: Option<NodeUsage>,
    /// The last commands it executed, oldest first: `(epoch, control node id)`. Lets tests
    /// and operators check from outside that executed epochs never go down.
    pub recent_commands: Vec<(Epoch, u64)>,
    /// Commands refused because their epoch was below the highest seen.
    pub refused_stale: u64,
    /// The last events for the Control (crashes, restarts, anomalies, health), numbered
    /// from 1 in this agent's life; a Control acts on those above the last number it saw.
    pub notices: Vec<(u64, AgentEvent)>,
}

/// A request from one node to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Control → Agent86.
    Agent {
        /// The Control sending it.
        from: NodeId,
        /// The Control's epoch.
        epoch: Epoch,
        /// What to do.
        cmd: AgentCommand,
    },
    /// A message-API request (from a client, or forwarded by a node to the Control).
    Api(smart_api::Request),
    /// The Control's registry copy, kept by every agent node so that a new Control can
    /// restore services whose node died together with the old Control. Answered `Done`.
    Replica(Vec<ReplicaEntry>),
    /// An event for the receiving node's subscribers (the Control fans its events out, so a
    /// subscriber on any node hears them). Answered with `Done`.
    Event(smart_api::Event),
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Agent86 state.
    Report(AgentReport),
    /// The command's epoch was below the highest the agent has seen: the sender is stale.
    Refused {
        /// The command's epoch.
        epoch: Epoch,
        /// The agent's highest epoch.
        highest: Epoch,
    },
    /// The command failed.
    Failed(String),
    /// Answer to an API request.
    Api(smart_api::Response),
    /// A started (or migrated-in) instance.
    Instance(InstanceInfo),
    /// Done.
    Done,
}

/// Why a request to a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// No answer within the deadline.
    #[error("request to {0} timed out")]
    Timeout(SocketAddr),
    /// Could not connect or the connection broke.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// A boxed future, so that [`PeerClient`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Outgoing requests, given to actors by the node runtime.
pub trait PeerClient: Send + Sync + 'static {
    /// Sends `req` to the node listening at `to` and waits at most `timeout` for the answer.
    fn request(
        &self,
        to: SocketAddr,
        req: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<PeerResponse, PeerError>>;
}
