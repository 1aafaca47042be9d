//! The HTTP/JSON API's shapes (`/v1` on every node's `http_listen`), for servers and
//! clients alike. The message-API types keep their postcard encoding; this module is the
//! JSON contract, documented here field by field and kept apart so that either can change
//! without the other.
//!
//! ## Routes
//! Every route needs `Authorization: Bearer <token>`; `GET` routes need a `read` token,
//! the others an `admin` token. Requests to a node that is not the Control are forwarded to
//! the Control (with retries across a failover), so any node will do.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /v1/status` | | [`ClusterStatus`](crate::ClusterStatus) (what `smart status --json` prints) |
//! | `GET /v1/version` | | [`VersionInfo`](crate::VersionInfo) |
//! | `GET /v1/nodes` | | [`Nodes`] |
//! | `GET /v1/services` | | [`Services`] |
//! | `GET /v1/services/{name}` | | [`Service`] |
//! | `GET /v1/services/{name}/location` | | [`Placement`](crate::Placement) (waits while the service restarts) |
//! | `POST /v1/services` | [`ServiceSpecJson`] | `201` [`Placement`](crate::Placement) |
//! | `DELETE /v1/services/{name}` | | [`Done`] |
//! | `POST /v1/services/{name}/clients` | [`AdmitClient`] (or no body) | `201` [`Placement`](crate::Placement) with `client`: its id |
//! | `DELETE /v1/services/{name}/clients/{id}` | | [`Done`] |
//! | `POST /v1/nodes/{id}/drain`, `/undrain` | | [`Done`] |
//! | `GET /v1/events?from=INDEX` | | a stream of [`EventRecord`]s (below) |
//! | `GET /v1/usage` | | [`UsageHistory`]: each member's load over the last minutes |
//! | `GET /v1/profiles` | | [`Profiles`]: each service class's profile, summarised |
//! | `GET /v1/profiles/{class}` | | the class's profile: `class`, `source`, `version` and `profile` (the `smart profile` JSON) |
//! | `PUT /v1/profiles/{class}` | a profile as `smart profile` writes it (at most 1 MiB) | [`Done`] |
//!
//! The same as an OpenAPI document: [`crate::openapi`] (`GET /openapi.json` on every node).
//! Node ids in paths are `3` or `n3`. Bodies are JSON (`Content-Type: application/json`),
//! at most 64 KiB; unknown fields are refused.
//!
//! ## Errors
//! Every error is [`ErrorBody`]: `{"error": {"code", "message", "retryable"}}`. `retryable`
//! is true when the same request may succeed later (an election or a rebuild in progress).
//!
//! | code | status | when |
//! |---|---|---|
//! | `bad_request` | 400 | malformed JSON (the message says where), a bad path or query |
//! | `unauthorized` | 401 | no token or an unknown one |
//! | `forbidden` | 403 | a `read` token on a write route |
//! | `not_found` | 404 | no such service, node, client or route |
//! | `method_not_allowed` | 405 | |
//! | `rejected` | 409 | admission said no, or a drain cannot move everything |
//! | `payload_too_large` | 413 | a body over 64 KiB |
//! | `unsupported_media_type` | 415 | a body without `Content-Type: application/json` |
//! | `internal` | 500 | a node could not carry the request out |
//! | `no_control`, `rebuilding`, `no_majority` | 503 | retryable: no Control right now |
//! | `timeout` | 504 | no answer in time (retryable) |
//! | `too_many_streams` | 503 | too many open event streams on this node (retryable) |
//!
//! ## Events
//! `GET /v1/events` streams newline-delimited JSON (`application/x-ndjson`), or Server-Sent
//! Events when asked with `Accept: text/event-stream` (the index is the SSE `id`, and
//! `Last-Event-ID` resumes). Each record is [`EventRecord`]: `index`, `at_ms` and the event's
//! fields with its `type`. `from=INDEX` (or `Last-Event-ID`) starts after that index; `0`
//! (the default) sends every event the node still keeps first. A `gap` record says events
//! were missed (older than the node's ring, or the node restarted). `follow=false` sends
//! what is kept and ends. Empty lines (NDJSON) or comments (SSE) keep idle streams alive.
//!
//! Indices are the answering node's: they grow through Control failovers and across the
//! node's restarts (see `smart::node::events`), so a client that stays with a node resumes
//! exactly; a client that moves to another node starts again from that node's ring.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use smart_proto::agent::Reservation;
use smart_proto::api::{ApiError, ControlView, Event, InstanceUse, MemberLoad, ServiceSpec};
use smart_proto::profile::ProfileSource;
use smart_proto::{Epoch, NodeId, ServiceName};

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorInfo,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Done {
    /// Always true.
    pub ok: bool,
}

/// A service to admit (`POST /v1/services`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpecJson {
    /// Unique name, e.g. `video-42`.
    pub name: ServiceName,
    /// Service class whose profile admission uses, e.g. `distributor`.
    pub class: String,
    /// Program and arguments Agent86 runs; `{listen}` is replaced by an address it picks.
    pub command: Vec<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Per-client network increment, bits/s (the video bitrate).
    #[serde(default)]
    pub per_client_bps: Option<u64>,
    /// Length of what it serves, milliseconds (a distributor's video), to scale its profile.
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

impl From<ServiceSpecJson> for ServiceSpec {
    fn from(s: ServiceSpecJson) -> Self {
        ServiceSpec {
            name: s.name,
            class: s.class,
            command: s.command,
            env: s.env.into_iter().collect(),
            per_client_bps: s.per_client_bps,
            duration_ms: s.duration_ms,
        }
    }
}

impl From<&ServiceSpec> for ServiceSpecJson {
    fn from(s: &ServiceSpec) -> Self {
        ServiceSpecJson {
            name: s.name.clone(),
            class: s.class.clone(),
            command: s.command.clone(),
            env: s.env.iter().cloned().collect(),
            per_client_bps: s.per_client_bps,
            duration_ms: s.duration_ms,
        }
    }
}

/// Body of `POST /v1/services/{name}/clients` (optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdmitClient {
    /// How to admit and start the service if it is not running yet (its `name` must be the
    /// path's).
    #[serde(default)]
    pub spec: Option<ServiceSpecJson>,
}

/// CPU, memory and network amounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Nodes {
    /// The Control, `null` during an election.
    pub control: Option<ControlView>,
    /// Every member, by node id.
    pub nodes: Vec<NodeJson>,
}

/// One member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Services {
    /// By name.
    pub services: Vec<Service>,
}

/// One admitted service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Profiles {
    /// By class.
    pub profiles: Vec<smart_proto::profile::ProfileSummary>,
}

/// One numbered event of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventRecord {
    /// Its index on the answering node: resume with `from=index`.
    pub index: u64,
    /// When the node heard it, Unix milliseconds.
    pub at_ms: u64,
    /// The event.
    #[serde(flatten)]
    pub event: EventJson,
}

/// An event, by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventJson {
    /// A new Control.
    ControlChanged {
        /// Its node.
        node: NodeId,
        /// Its epoch.
        epoch: Epoch,
    },
    /// A member died or came back.
    MemberChanged {
        /// The member.
        node: NodeId,
        /// Alive now.
        alive: bool,
    },
    /// A service or client was admitted and placed.
    Admitted {
        /// The service.
        service: ServiceName,
        /// Its node.
        node: NodeId,
        /// Where its clients connect.
        endpoint: String,
        /// The client admitted, if any.
        client: Option<u64>,
    },
    /// A service moved.
    Migrated {
        /// The service.
        service: ServiceName,
        /// From node.
        from: NodeId,
        /// To node.
        to: NodeId,
        /// Why (`ms`, `drain`, `anomaly`, `node-failure`).
        reason: String,
    },
    /// A service could not be kept.
    Lost {
        /// The service.
        service: ServiceName,
        /// Why.
        reason: String,
    },
    /// The Control acted on a service (or a node) without moving it.
    Notice {
        /// The service (empty for node notices such as an undrain).
        service: ServiceName,
        /// Its node.
        node: NodeId,
        /// What and why.
        reason: String,
    },
    /// A class's profile was stored or refined.
    ProfileStored {
        /// The service class.
        class: String,
        /// Where it comes from.
        source: ProfileSource,
        /// Its new version.
        version: u64,
    },
    /// The Control stopped a service (idle, over its memory, or asked to).
    Stopped {
        /// The service.
        service: ServiceName,
        /// Where it ran.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// A node failed its health checks and was drained, or recovered and was undrained.
    NodeHealth {
        /// The node.
        node: NodeId,
        /// Healthy now.
        healthy: bool,
        /// The checks and their readings.
        detail: String,
    },
    /// A profiling job moved on.
    ProfileProgress {
        /// The service class.
        class: String,
        /// The node running it.
        node: NodeId,
        /// What it is doing.
        what: String,
        /// Finished.
        done: bool,
        /// Why it failed.
        error: Option<String>,
    },
    /// Events `from..=to` were missed (no longer kept, or the node restarted).
    Gap {
        /// First index missed.
        from: u64,
        /// Last index missed (this record's `index`).
        to: u64,
    },
}

impl From<&Event> for EventJson {
    fn from(e: &Event) -> Self {
        match e.clone() {
            Event::ControlChanged { node, epoch } => EventJson::ControlChanged { node, epoch },
            Event::MemberChanged { node, alive } => EventJson::MemberChanged { node, alive },
            Event::Admitted(p) => EventJson::Admitted {
                service: p.service,
                node: p.node,
                endpoint: p.endpoint,
                client: p.client,
            },
            Event::Migrated {
                service,
                from,
                to,
                reason,
            } => EventJson::Migrated {
                service,
                from,
                to,
                reason,
            },
            Event::Lost { service, reason } => EventJson::Lost { service, reason },
            Event::Notice {
                service,
                node,
                reason,
            } => EventJson::Notice {
                service,
                node,
                reason,
            },
            Event::ProfileStored {
                class,
                source,
                version,
            } => EventJson::ProfileStored {
                class,
                source,
                version,
            },
            Event::Stopped {
                service,
                node,
                reason,
            } => EventJson::Stopped {
                service,
                node,
                reason,
            },
            Event::NodeHealth {
                node,
                healthy,
                detail,
            } => EventJson::NodeHealth {
                node,
                healthy,
                detail,
            },
            Event::ProfileProgress {
                class,
                node,
                what,
                done,
                error,
            } => EventJson::ProfileProgress {
                class,
                node,
                what,
                done,
                error,
            },
        }
    }
}

/// `GET /v1/usage`: each member's load, sampled by the answering node from heartbeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageHistory {
    /// Sampling period, milliseconds.
    pub interval_ms: u64,
    /// Samples per member, oldest first.
    pub nodes: Vec<NodeUsageSeries>,
}

/// One member's samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeUsageSeries {
    /// The member.
    pub node_id: NodeId,
    /// Samples, oldest first.
    pub points: Vec<UsagePoint>,
}

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_flat_json_with_a_type() {
        let r = EventRecord {
            index: 3005,
            at_ms: 1,
            event: (&Event::MemberChanged {
                node: NodeId(2),
                alive: false,
            })
                .into(),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"index": 3005, "at_ms": 1, "type": "member_changed", "node": 2, "alive": false})
        );
        assert_eq!(serde_json::from_value::<EventRecord>(v).unwrap(), r);
    }

    #[test]
    fn specs_refuse_unknown_fields_and_default_the_optional_ones() {
        let s: ServiceSpecJson =
            serde_json::from_str(r#"{"name":"v","class":"distributor","command":["x"]}"#).unwrap();
        assert!(s.env.is_empty() && s.per_client_bps.is_none());
        let e = serde_json::from_str::<ServiceSpecJson>(
            r#"{"name":"v","class":"d","command":[],"colour":1}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn every_api_error_has_a_code_and_a_status() {
        let (code, status) = error_code(&ApiError::NoControl);
        assert_eq!((code, status), ("no_control", 503));
        let b = ErrorBody::from(&ApiError::Rejected {
            reason: "cpu".into(),
        });
        assert_eq!(b.error.code, "rejected");
        assert!(!b.error.retryable);
    }
}
