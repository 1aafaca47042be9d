//! The message API (docs/DESIGN.md §6): what a front-end such as GloVE's Supervisor, or the
//! `smart` admin commands, say to any node of the cluster. Requests addressed to a node that
//! is not the Control are forwarded by it to the Control, so a client needs only one address.
//!
//! The wire format (postcard inside the node transport) is documented in the `smart-api`
//! crate, which also has the async client.

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, Incarnation, NodeId, ServiceName};

/// Version of the message API's types.
pub const API_VERSION: u8 = 2;

/// What a service needs, as given by the front-end when it asks for admission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Unique name, e.g. `video-42`.
    pub name: ServiceName,
    /// Service class whose profile admission uses, e.g. `distributor`.
    pub class: String,
    /// Command line Agent86 runs for it.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Per-client network increment in bits/s (the video bitrate), when it has clients.
    pub per_client_bps: Option<u64>,
}

/// A request to any node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Members and Control as this node sees them.
    Status,
    /// Admit and place a service.
    AdmitService(ServiceSpec),
    /// Admit one client of a service (Smart-GloVE rule: it joins that service's instance).
    /// With `spec`, a service that is not admitted yet is admitted first (from `spec`), so a
    /// video's first viewer costs one round trip to the Control, not three.
    AdmitClient {
        /// The service.
        service: ServiceName,
        /// How to admit and start the service if it is not running yet.
        spec: Option<ServiceSpec>,
    },
    /// Release one client of a service: `client` (the id its admission returned), or the
    /// newest when `None`.
    ReleaseClient {
        /// The service.
        service: ServiceName,
        /// Which client.
        client: Option<u64>,
    },
    /// Stop a service and release its reservation.
    StopService {
        /// The service.
        service: ServiceName,
    },
    /// Move every service off a node (maintenance).
    Drain {
        /// Node id.
        node: NodeId,
    },
    /// Start receiving [`Event`]s on this connection.
    Subscribe,
    /// Where a service's clients connect now, without admitting a client (a viewer resuming
    /// after its distributor moved or died). Answered with `Placed` or `NotFound`.
    Locate {
        /// The service.
        service: ServiceName,
    },
    /// Every admitted service and where it runs (answered by the Control with `Services`).
    Services,
    /// Take a drained node back into placement.
    Undrain {
        /// Node id.
        node: NodeId,
    },
}

/// Where an admitted service or client goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The service.
    pub service: ServiceName,
    /// Node running its instance.
    pub node: NodeId,
    /// Where clients connect (e.g. `http://10.0.0.2:9001/`).
    pub endpoint: String,
    /// The client admitted, in answers to `AdmitClient`: name it in `ReleaseClient`.
    pub client: Option<u64>,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Status`.
    Status(ClusterStatus),
    /// Service or client admitted.
    Placed(Placement),
    /// Done, nothing to report.
    Ok,
    /// The request failed.
    Error(ApiError),
    /// Answer to `Services`: each service's placement and admitted clients.
    Services(Vec<ServiceStatus>),
}

/// One admitted service, as the Control sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Where it runs.
    pub placement: Placement,
    /// Its instance's name (changes at each migration or restart).
    pub instance: String,
    /// Clients admitted.
    pub clients: u64,
}

/// A push to subscribers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A new Control was elected.
    ControlChanged {
        /// Its node id.
        node: NodeId,
        /// Its epoch.
        epoch: Epoch,
    },
    /// A member was declared dead or came back.
    MemberChanged {
        /// Node id.
        node: NodeId,
        /// Alive now?
        alive: bool,
    },
    /// A service was admitted and placed.
    Admitted(Placement),
    /// A service moved.
    Migrated {
        /// The service.
        service: ServiceName,
        /// From node.
        from: NodeId,
        /// To node.
        to: NodeId,
        /// Reason (`ms`, `drain`, `anomaly`, `node-failure`).
        reason: String,
    },
    /// A service could not be kept (should never happen: counted as lost).
    Lost {
        /// The service.
        service: ServiceName,
        /// Why.
        reason: String,
    },
    /// The Control acted on a service without moving it, or chose not to move it: an
    /// anomalous instance kept where it is (no other node fits, or moved too recently), or
    /// clients released because its instance reports fewer viewers than were admitted.
    /// Added after the variants above, so older decoders only lack this one.
    Notice {
        /// The service.
        service: ServiceName,
        /// Its node.
        node: NodeId,
        /// What happened and why (e.g. `anomaly: kept on n2: no other node fits`).
        reason: String,
    },
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApiError {
    /// Admission control said no: the cluster cannot keep its QoS with this load.
    #[error("rejected by admission control: {reason}")]
    Rejected {
        /// Which test failed (cluster or node, resource).
        reason: String,
    },
    /// There is no Control right now (election in progress); retry shortly.
    #[error("no Control is elected right now; retry in a moment")]
    NoControl,
    /// The Control is rebuilding its state after a failover; retry shortly.
    #[error("the Control is rebuilding its state after a failover; retry in a moment")]
    Rebuilding,
    /// Majority mode: this Control lacks a majority of leases.
    #[error("the Control has no majority (partition?); retry later")]
    NoMajority,
    /// Unknown service or node.
    #[error("not found: {what}")]
    NotFound {
        /// What was not found.
        what: String,
    },
    /// The request is malformed or not allowed.
    #[error("bad request: {reason}")]
    BadRequest {
        /// Why.
        reason: String,
    },
    /// Internal failure (a node could not carry out the request).
    #[error("internal error: {reason}")]
    Internal {
        /// Why.
        reason: String,
    },
}

impl ApiError {
    /// True when retrying the same request later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ApiError::NoControl | ApiError::Rebuilding | ApiError::NoMajority
        )
    }
}

/// The Control as seen by the answering node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlView {
    /// Node id of the Control.
    pub node_id: NodeId,
    /// Its epoch.
    pub epoch: Epoch,
}

/// One member as seen by the answering node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node id.
    pub node_id: NodeId,
    /// Its transport address.
    pub address: String,
    /// Whether the failure detector considers it alive.
    pub alive: bool,
    /// Its roles (`agent`, `control`, `profiler`, `front-end`).
    pub roles: Vec<String>,
    /// Milliseconds since it was last heard (0 for the answering node itself).
    pub last_heard_ms: u64,
    /// Its incarnation.
    pub incarnation: Incarnation,
    /// The load summary from its last heartbeat.
    pub load: MemberLoad,
}

/// The small load summary every heartbeat carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberLoad {
    /// CPU in use, millicores.
    pub cpu_milli: u32,
    /// Memory in use, MiB.
    pub mem_used_mib: u32,
    /// Network traffic, kbit/s.
    pub net_kbps: u32,
    /// Service instances running.
    pub instances: u16,
}

/// Answer to [`Request::Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: NodeId,
    /// Highest epoch it has seen.
    pub highest_epoch: Epoch,
    /// The Control, `None` while there is none.
    pub control: Option<ControlView>,
    /// Members, the answering node included, by node id.
    pub members: Vec<MemberStatus>,
    /// Counters: dropped datagrams by reason, failed handshakes, restarts, ...
    pub counters: Vec<(String, u64)>,
}
