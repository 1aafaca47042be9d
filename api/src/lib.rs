//! # smart-api
//!
//! The SMART message API (DESIGN §6): what a front-end such as GloVE's Supervisor, or the
//! `smart` admin commands, say to any node of the cluster. Requests addressed to a node that
//! is not the Control are forwarded by it to the Control, so a client needs only one address.
//!
//! ## Layout
//! - [`Request`] / [`Response`]: one request, one response, over the node's TCP transport.
//! - [`Event`]: what subscribers are pushed (admissions, migrations, failures, Control changes).
//! - [`ClusterStatus`]: the answer to `Status`, also printed by `smart status --json`.
//! - [`ApiError`]: typed errors, each saying whether a retry can help.
//! - [`NodeRequest`] / [`NodeResponse`] / [`NodeProtocol`]: what a node's TCP port speaks:
//!   the message API, plus node-to-node messages that external clients never send.
//! - [`client`]: [`client::ApiClient`], the async client; `examples/supervisor.rs` is a
//!   minimal external front-end (admit a video's distributor and a viewer, follow events).
//!
//! ## Requests and what answers them
//! | request | answer | by |
//! |---|---|---|
//! | `Status` | `Status(ClusterStatus)` | the node asked |
//! | `Subscribe` | `Ok`, then `Event` notifications on that connection | the node asked (the Control fans events out to every node) |
//! | `AdmitService(spec)` | `Placed` once its instance runs, or `Error(Rejected)` | the Control |
//! | `AdmitClient{service}` | `Placed` (the service's instance), `Error(Rejected)` or `Error(NotFound)` | the Control |
//! | `ReleaseClient{service}`, `StopService{service}` | `Ok` or `Error(NotFound)` | the Control |
//! | `Drain{node}` | `Ok` (moves start), or `Error(Rejected)` naming what cannot move | the Control |
//! | `Locate{service}` | `Placed` (waits while the service restarts) or `Error(NotFound)` | the Control |
//! | `Services` | `Services(Vec<ServiceStatus>)` | the Control |
//!
//! In a `ServiceSpec` command, `{listen}` is replaced by an address Agent86 picks on the
//! chosen node; the instance's endpoint is `http://{listen}/`.
//!
//! ## Wire format
//! Messages travel inside the SMART TCP transport (`smart_supervision::transport`: a
//! 4-byte big-endian length, a postcard envelope, a mutual HMAC handshake with the cluster
//! key). A client sends `NodeRequest::Api(Request)` and receives `NodeResponse::Api(Response)`;
//! subscribers receive [`Event`] notifications. All are encoded with postcard (serde's data model: enums are a varint
//! variant index followed by the fields in order; integers are varints; strings and vectors
//! are a varint length then the bytes/elements; `Option` is a 0/1 byte then the value).
//! Variant indices are the declaration order below and are never reused: new variants are
//! only appended, and [`API_VERSION`] changes when a message changes shape.

use serde::{Deserialize, Serialize};

pub mod client;

/// Version of the message API's types.
pub const API_VERSION: u8 = 1;

/// Identity of a hosted service instance (e.g. the distributor of one video).
pub type ServiceName = String;

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
    AdmitClient {
        /// The service.
        service: ServiceName,
    },
    /// Release one client of a service.
    ReleaseClient {
        /// The service.
        service: ServiceName,
    },
    /// Stop a service and release its reservation.
    StopService {
        /// The service.
        service: ServiceName,
    },
    /// Move every service off a node (maintenance).
    Drain {
        /// Node id.
        node: u64,
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
}

/// Where an admitted service or client goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The service.
    pub service: ServiceName,
    /// Node running its instance.
    pub node: u64,
    /// Where clients connect (e.g. `http://10.0.0.2:9001/`).
    pub endpoint: String,
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
        node: u64,
        /// Its epoch.
        epoch: u64,
    },
    /// A member was declared dead or came back.
    MemberChanged {
        /// Node id.
        node: u64,
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
        from: u64,
        /// To node.
        to: u64,
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
        node: u64,
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
    pub node_id: u64,
    /// Its epoch.
    pub epoch: u64,
}

/// One member as seen by the answering node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node id.
    pub node_id: u64,
    /// Its transport address.
    pub address: String,
    /// Whether the failure detector considers it alive.
    pub alive: bool,
    /// Its roles (`agent`, `control`, `profiler`, `front-end`).
    pub roles: Vec<String>,
    /// Milliseconds since it was last heard (0 for the answering node itself).
    pub last_heard_ms: u64,
    /// Its incarnation.
    pub incarnation: u64,
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
    pub node_id: u64,
    /// Highest epoch it has seen.
    pub highest_epoch: u64,
    /// The Control, `None` while there is none.
    pub control: Option<ControlView>,
    /// Members, the answering node included, by node id.
    pub members: Vec<MemberStatus>,
    /// Counters: dropped datagrams by reason, failed handshakes, restarts, ...
    pub counters: Vec<(String, u64)>,
}

/// What a node's TCP port receives as a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeRequest {
    /// A message-API request (from any authenticated client or node).
    Api(Request),
    /// A node-to-node message (Control to Agent86, ...), postcard-encoded by the node
    /// runtime. Refused from clients that are not nodes.
    Internal(Vec<u8>),
}

/// What a node's TCP port answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeResponse {
    /// Answer to [`NodeRequest::Api`].
    Api(Response),
    /// Answer to [`NodeRequest::Internal`].
    Internal(Vec<u8>),
}

/// The protocol of a node's TCP port, for `smart_supervision::transport`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeProtocol;

impl smart_supervision::transport::Protocol for NodeProtocol {
    type Request = NodeRequest;
    type Response = NodeResponse;
    type Notify = Event;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_postcard() {
        let s = Response::Status(ClusterStatus {
            node_id: 2,
            highest_epoch: 7,
            control: Some(ControlView {
                node_id: 1,
                epoch: 7,
            }),
            members: vec![MemberStatus {
                node_id: 1,
                address: "127.0.0.1:7101".into(),
                alive: true,
                roles: vec!["agent".into()],
                last_heard_ms: 40,
                incarnation: 3,
                load: MemberLoad::default(),
            }],
            counters: vec![("dropped_bad_tag".into(), 2)],
        });
        let bytes = postcard::to_allocvec(&s).unwrap();
        assert_eq!(postcard::from_bytes::<Response>(&bytes).unwrap(), s);
    }

    #[test]
    fn retryable_errors_are_the_transient_ones() {
        assert!(ApiError::NoControl.is_retryable());
        assert!(
            !ApiError::Rejected {
                reason: "cpu".into()
            }
            .is_retryable()
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(0u8..=255, 0..256)) {
            let _ = postcard::from_bytes::<Request>(&bytes);
            let _ = postcard::from_bytes::<Response>(&bytes);
        }
    }
}
