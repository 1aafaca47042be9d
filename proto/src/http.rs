//! The HTTP/JSON API's shapes (`/v1` on every node): what its routes answer and accept. The
//! routes, error codes and event stream are documented in `smart_api::http`, which
//! re-exports these. Where a message-API type has the JSON the HTTP API shows, it is used
//! as is (`ServiceSpec`, `Placement`, `ClusterStatus`, ...); events are [`EventJson`],
//! written down once with [`crate::api::Event`].

use serde::{Deserialize, Serialize};

use crate::agent::Reservation;
use crate::api::{ApiError, ControlView, EventJson, InstanceUse, MemberLoad, ServiceSpec};
use crate::ids::{NodeId, ServiceName};
use crate::profile::{ProfileSource, ProfileSummary};

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorInfo,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorInfo {
    /// A stable code (see the module docs).
    pub code: String,
    /// For humans.
    pub message: String,
    /// True when the same request may succeed later.
    pub retryable: bool,
}

impl ErrorBody {
    /// An error with `code`.
    pub fn new(code: &str, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            error: ErrorInfo {
                code: code.into(),
                message: message.into(),
                retryable,
            },
        }
    }
}

/// The stable code and HTTP status of a message-API error.
pub fn error_code(e: &ApiError) -> (&'static str, u16) {
    match e {
        ApiError::Rejected { .. } => ("rejected", 409),
        ApiError::NoControl => ("no_control", 503),
        ApiError::Rebuilding => ("rebuilding", 503),
        ApiError::NoMajority => ("no_majority", 503),
        ApiError::NotCommitted { .. } => ("not_committed", 503),
        ApiError::NotFound { .. } => ("not_found", 404),
        ApiError::BadRequest { .. } => ("bad_request", 400),
        ApiError::Internal { .. } => ("internal", 500),
        ApiError::TimedOut => ("timed_out", 504),
    }
}

impl From<&ApiError> for ErrorBody {
    fn from(e: &ApiError) -> Self {
        ErrorBody::new(error_code(e).0, e.to_string(), e.is_retryable())
    }
}

/// A request that changed something and has nothing to report: `{"ok": true}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Done {
    /// Always true.
    pub ok: bool,
}

/// Body of `POST /v1/services/{name}/clients` (optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AdmitClient {
    /// How to admit and start the service if it is not running yet (its `name` must be the
    /// path's).
    #[serde(default)]
    pub spec: Option<ServiceSpec>,
}

/// CPU, memory and network amounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resources {
    /// Cores.
    pub cpu_cores: f64,
    /// Bytes.
    pub memory_bytes: u64,
    /// Bits per second.
    pub network_bps: f64,
}

impl From<Reservation> for Resources {
    fn from(r: Reservation) -> Self {
        Resources {
            cpu_cores: r.cpu_cores,
            memory_bytes: r.mem_bytes,
            network_bps: r.net_bps,
        }
    }
}

/// `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Nodes {
    /// The Control, `null` during an election.
    pub control: Option<ControlView>,
    /// Every member, by node id.
    pub nodes: Vec<NodeJson>,
}

/// One member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeJson {
    /// Node id.
    pub node_id: NodeId,
    /// Its transport address.
    pub address: String,
    /// Its HTTP API, once known.
    pub http: Option<String>,
    /// Alive, per the answering node's failure detector.
    pub alive: bool,
    /// Its roles.
    pub roles: Vec<String>,
    /// Milliseconds since it was last heard.
    pub last_heard_ms: u64,
    /// Load from its heartbeats.
    pub load: MemberLoad,
    /// The Control's view of it (agents only; `null` without a Control or a report).
    pub placement: Option<NodePlacement>,
}

/// An agent node as the Control sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodePlacement {
    /// Kept out of placement by a drain.
    pub drained: bool,
    /// VR: the share of capacity admission may fill.
    pub vr: f64,
    /// What the node offers (`null` before its first sample).
    pub capacity: Option<Resources>,
    /// What is in use (last sample).
    pub usage: Option<Resources>,
    /// What admission reserved on it.
    pub reserved: Resources,
    /// Its instances.
    pub instances: Vec<InstanceUse>,
}

/// `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Services {
    /// By name.
    pub services: Vec<Service>,
}

/// One admitted service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Service {
    /// Its name.
    pub name: ServiceName,
    /// The node running its instance.
    pub node: NodeId,
    /// Where clients connect.
    pub endpoint: String,
    /// Its instance (changes at each migration or restart).
    pub instance: String,
    /// Clients admitted.
    pub clients: u64,
    /// Clients its instance reports connected, when it reports them.
    pub clients_connected: Option<u32>,
    /// What admission reserved for its instance (when the Control has the node's report).
    pub reserved: Option<Resources>,
    /// What its instance used at the last sample.
    pub usage: Option<Resources>,
    /// Where the profile its reservation comes from was taken: `measured` (`smart profiles
    /// put`), `refined` (online, from running instances) or `default` (the nodes'
    /// `[admission] default_profile`).
    pub profile: ProfileSource,
    /// Its node enforces limits derived from the reservation (the cgroup driver); false:
    /// nothing caps the instance (the process driver).
    pub limits_enforced: bool,
}

/// `GET /v1/profiles`: every class's profile, summarised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Profiles {
    /// By class.
    pub profiles: Vec<ProfileSummary>,
}

/// One numbered event of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventRecord {
    /// Its index on the answering node: resume with `from=index`.
    pub index: u64,
    /// When the node heard it, Unix milliseconds.
    pub at_ms: u64,
    /// The event.
    #[serde(flatten)]
    pub event: EventJson,
}

/// `GET /v1/usage`: each member's load, sampled by the answering node from heartbeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageHistory {
    /// Sampling period, milliseconds.
    pub interval_ms: u64,
    /// Samples per member, oldest first.
    pub nodes: Vec<NodeUsageSeries>,
}

/// One member's samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeUsageSeries {
    /// The member.
    pub node_id: NodeId,
    /// Samples, oldest first.
    pub points: Vec<UsagePoint>,
}

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsagePoint {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Alive then.
    pub alive: bool,
    /// CPU in use, cores.
    pub cpu_cores: f64,
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Network traffic, bits/s.
    pub network_bps: f64,
}
