//! The message API (docs/DESIGN.md §6): what a front-end such as GloVE's Supervisor, or the
//! `smart` admin commands, say to any node of the cluster. Requests addressed to a node that
//! is not the Control are forwarded by it to the Control, so a client needs only one address.
//!
//! The wire format (postcard inside the node transport) is documented in the `smart-api`
//! crate, which also has the async client.

use serde::{Deserialize, Serialize};

use crate::agent::{Reservation, UsageReading};
use crate::ids::{Epoch, Incarnation, NodeId, ServiceName};
use crate::profile::{ClassProfile, ProfileSource, ProfileSummary, ServiceProfile};

/// Version of the message API's types.
/// 3: `Version`, `Nodes`, `MemberStatus::http`, events travel as [`EventNote`].
/// 4: `AdmitClient::key` (idempotent admissions), `ApiError::TimedOut`; `Event::ProfileProgress`
/// (never sent) removed. 5: `ApiError::NotCommitted` (the desired-state log).
pub const API_VERSION: u8 = 5;

/// What a service needs, as given by the front-end when it asks for admission. Also the
/// JSON body of the HTTP API's `POST /v1/services` (`env` is an object there; unknown
/// fields are refused, the optional ones default).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique name, e.g. `video-42`.
    pub name: ServiceName,
    /// Service class whose profile admission uses, e.g. `distributor`.
    pub class: String,
    /// Program and arguments Agent86 runs; `{listen}` is replaced by an address it picks.
    pub command: Vec<String>,
    /// Extra environment.
    #[serde(default, with = "env_map")]
    #[cfg_attr(feature = "openapi", schema(value_type = std::collections::BTreeMap<String, String>))]
    pub env: Vec<(String, String)>,
    /// Per-client network increment in bits/s (the video bitrate), when it has clients.
    /// For a distributor the class profile is scaled to this bitrate.
    #[serde(default)]
    pub per_client_bps: Option<u64>,
    /// Length of what it serves, milliseconds (a distributor's video): its cache holds a
    /// fraction of it, so its profile is scaled to it.
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

/// An environment as a map: a JSON object, and in postcard a length then the pairs (the
/// very bytes of the list of pairs it is in memory).
mod env_map {
    use serde::de::{MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        env: &[(String, String)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(env.len()))?;
        for (k, v) in env {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(String, String)>, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Vec<(String, String)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                // Bounded by what the input holds, not by what its length prefix claims.
                let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0).min(64));
                while let Some(kv) = a.next_entry()? {
                    v.push(kv);
                }
                Ok(v)
            }
        }
        d.deserialize_map(Pairs)
    }
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
        /// Idempotency key, chosen by the caller once per logical request (a viewer's
        /// request, an API call): a repeat with the same key (a retry, a forward after a
        /// timeout) answers the client the first one admitted instead of admitting another.
        key: Option<u64>,
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
    /// Store `profile` as the profile of service class `class` (replacing its profile).
    PutProfile {
        /// The service class.
        class: String,
        /// The profile (as `smart profile` writes it).
        profile: Box<ServiceProfile>,
    },
    /// Every class's profile, summarised.
    Profiles,
    /// One class's profile, whole.
    Profile {
        /// The service class.
        class: String,
    },
    /// The answering node's versions and HTTP API address (answered by the node asked).
    /// Clients send it first, on connect; nodes ask each other for their HTTP address.
    Version,
    /// Every agent node as the Control sees it: capacity, usage, reservations, drains
    /// (answered by the Control's node with `Nodes`).
    Nodes,
}

impl Request {
    /// True for requests that only read (what a read-scope client may send).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::Status
                | Request::Subscribe
                | Request::Locate { .. }
                | Request::Services
                | Request::Profiles
                | Request::Profile { .. }
                | Request::Version
                | Request::Nodes
        )
    }
}

/// Where an admitted service or client goes.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Answer to `Profiles`.
    Profiles(Vec<ProfileSummary>),
    /// Answer to `Profile`.
    Profile(Box<ClassProfile>),
    /// Answer to `Version`.
    Version(VersionInfo),
    /// Answer to `Nodes`, by node id.
    Nodes(Vec<NodeReport>),
}

/// Answer to [`Request::Version`]: what the answering node speaks.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The node that answered.
    pub node_id: NodeId,
    /// Its `smart` crate version.
    pub version: String,
    /// [`API_VERSION`] of its message API.
    pub api_version: u8,
    /// Version of its TCP transport's frames.
    pub wire_version: u8,
    /// Version of its heartbeat datagrams.
    pub heartbeat_version: u8,
    /// Base URL of its HTTP/JSON API (`http://ip:port`), when it serves one.
    pub http: Option<String>,
}

/// One agent node as the Control sees it (answer to [`Request::Nodes`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Node id.
    pub node_id: NodeId,
    /// Kept out of placement by a drain.
    pub drained: bool,
    /// Its last usage sample (capacity and use), when it reported one.
    pub usage: Option<crate::agent::NodeUsage>,
    /// Sum of what admission reserved on it (its instances).
    pub reserved: crate::agent::Reservation,
    /// The fraction of capacity admission may fill (`VR`, thesis eq. 4.1).
    pub vr: f64,
    /// Its instances.
    pub instances: Vec<InstanceUse>,
}

/// One instance in a [`NodeReport`]: its reservation against its last sample.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceUse {
    /// Instance name (`<service>.<generation>`).
    pub instance: String,
    /// Its service, when the Control started it.
    pub service: Option<ServiceName>,
    /// What admission reserved for it.
    pub reserved: crate::agent::Reservation,
    /// Cores used at the last sample.
    pub cpu_cores: Option<f64>,
    /// Network at the last sample, bits/s (when measurable).
    pub net_bps: Option<f64>,
    /// Working set at the last sample, bytes.
    pub mem_bytes: Option<u64>,
    /// Clients the instance reports connected (viewers of a distributor).
    pub clients: Option<u32>,
}

/// An [`Event`] as subscribers receive it on the node transport: the event's postcard bytes
/// inside a byte string. A receiver that does not know the event's variant (one added by a
/// newer node) gets [`EventNote::Unknown`] and skips it; without the byte string around it,
/// the unknown variant would fail the whole frame and close the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum EventNote {
    /// An event this build knows.
    Known(Event),
    /// An event this build cannot decode, as received (relayed as is).
    Unknown(Vec<u8>),
}

impl From<Event> for EventNote {
    fn from(e: Event) -> Self {
        EventNote::Known(e)
    }
}

impl Serialize for EventNote {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EventNote::Known(e) => {
                let bytes = postcard::to_allocvec(e).map_err(serde::ser::Error::custom)?;
                s.serialize_bytes(&bytes)
            }
            EventNote::Unknown(b) => s.serialize_bytes(b),
        }
    }
}

impl<'de> Deserialize<'de> for EventNote {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = EventNote;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an event's bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<EventNote, E> {
                // Every byte must belong to the event: a known variant with trailing bytes
                // is a newer shape of it, not something to guess at.
                Ok(match postcard::take_from_bytes::<Event>(v) {
                    Ok((e, [])) => EventNote::Known(e),
                    _ => EventNote::Unknown(v.to_vec()),
                })
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<EventNote, E> {
                self.visit_bytes(&v)
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

/// One admitted service, as the Control sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Where it runs.
    pub placement: Placement,
    /// Its instance's name (changes at each migration or restart).
    pub instance: String,
    /// Clients admitted.
    pub clients: u64,
    /// What admission reserved for it (on its node).
    pub reservation: Reservation,
    /// Its instance's last usage sample.
    pub usage: Option<UsageReading>,
    /// Where its profile comes from.
    pub profile: ProfileSource,
    /// Agent86 enforces limits derived from the reservation (the cgroup driver); with the
    /// process driver nothing caps the instance.
    pub limits_enforced: bool,
}

/// Declares [`Event`] (the message API's, postcard) and [`EventJson`] (the HTTP API's
/// `/v1/events`, JSON with a `type` tag) from one list of variants, so that the two cannot
/// drift apart: the same variants, fields and documentation, plus the JSON-only variants
/// (`gap`). A tuple variant names its one field (`Admitted(placement: Placement)`) so that
/// the conversion can bind it; in JSON its fields are inlined beside `type`.
macro_rules! events {
    (
        $(#[$emeta:meta])*
        pub enum Event;
        $(#[$jmeta:meta])*
        pub enum EventJson;
        {
            $(
                $(#[$vmeta:meta])*
                $variant:ident
                $( { $( $(#[$fmeta:meta])* $field:ident : $fty:ty ),* $(,)? } )?
                $( ( $bind:ident : $inner:ty ) )?
            ),* $(,)?
        }
        json_only {
            $(
                $(#[$jvmeta:meta])*
                $jvariant:ident { $( $(#[$jfmeta:meta])* $jfield:ident : $jfty:ty ),* $(,)? }
            ),* $(,)?
        }
    ) => {
        $(#[$emeta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub enum Event {
            $(
                $(#[$vmeta])*
                $variant
                $( { $( $(#[$fmeta])* $field : $fty ),* } )?
                $( ( $inner ) )?
            ),*
        }

        $(#[$jmeta])*
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum EventJson {
            $(
                $(#[$vmeta])*
                $variant
                $( { $( $(#[$fmeta])* $field : $fty ),* } )?
                $( ( $inner ) )?
            ),*,
            $(
                $(#[$jvmeta])*
                $jvariant { $( $(#[$jfmeta])* $jfield : $jfty ),* }
            ),*
        }

        impl From<Event> for EventJson {
            fn from(e: Event) -> Self {
                match e {
                    $(
                        Event::$variant $( { $( $field ),* } )? $( ( $bind ) )?
                            => EventJson::$variant $( { $( $field ),* } )? $( ( $bind ) )?
                    ),*
                }
            }
        }

        impl From<&Event> for EventJson {
            fn from(e: &Event) -> Self {
                e.clone().into()
            }
        }
    };
}

events! {
    /// A push to subscribers.
    pub enum Event;
    /// An event as the HTTP API shows it (`GET /v1/events`): the [`Event`]'s fields beside
    /// its `type` (the variant in snake case), and `gap` records.
    pub enum EventJson;
    {
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
        /// A service or client was admitted and placed.
        Admitted(placement: Placement),
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
        /// The Control acted on a service (or a node) without moving it, or chose not to
        /// move it: an anomalous instance kept where it is (no other node fits, or moved too
        /// recently), or clients released because its instance reports fewer viewers than
        /// were admitted. Added after the variants above, so older decoders only lack this
        /// one.
        Notice {
            /// The service (empty for node notices such as an undrain).
            service: ServiceName,
            /// Its node.
            node: NodeId,
            /// What happened and why (e.g. `anomaly: kept on n2: no other node fits`).
            reason: String,
        },
        /// A class's profile was stored (by an operator, a profiling job, or refinement).
        ProfileStored {
            /// The service class.
            class: String,
            /// Where it comes from.
            source: ProfileSource,
            /// Its new version.
            version: u64,
        },
        /// A service was stopped by the Control: no clients for `idle_stop_after`, over its
        /// memory, or an operator's `StopService`.
        Stopped {
            /// The service.
            service: ServiceName,
            /// Where it ran.
            node: NodeId,
            /// Why.
            reason: String,
        },
        /// A node failed a health check and was drained, or recovered and was undrained.
        NodeHealth {
            /// The node.
            node: NodeId,
            /// Healthy now.
            healthy: bool,
            /// The checks and their readings.
            detail: String,
        },
    }
    json_only {
        /// Events `from..=to` were missed (no longer kept, or the node restarted).
        Gap {
            /// First index missed.
            from: u64,
            /// Last index missed (this record's `index`).
            to: u64,
        },
    }
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
    /// Majority mode: this Control no longer has a majority of the control nodes behind it.
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
    /// The request's deadline passed before it was answered (it may still take effect; an
    /// `AdmitClient` repeated with the same key answers the same client).
    #[error("the request's deadline passed before it was answered")]
    TimedOut,
    /// The change could not be written to the desired-state log (docs/DESIGN.md, "Desired
    /// state in a Raft log"): nothing was done. `reason` names why (typically: no majority
    /// of the control nodes reachable from this side of a partition).
    #[error("the desired state could not be changed: {reason}")]
    NotCommitted {
        /// Why.
        reason: String,
    },
}

impl ApiError {
    /// True when retrying the same request shortly can succeed (a node forwarding it retries
    /// these within the request's deadline). Not `NotCommitted`: a side without a majority
    /// stays so for as long as the partition lasts; the caller decides.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ApiError::NoControl | ApiError::Rebuilding | ApiError::NoMajority
        )
    }
}

/// The Control as seen by the answering node.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlView {
    /// Node id of the Control.
    pub node_id: NodeId,
    /// Its epoch.
    pub epoch: Epoch,
}

/// One member as seen by the answering node.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Base URL of its HTTP/JSON API (`http://ip:port`), once known (each node asks the
    /// others for it when they come up).
    pub http: Option<String>,
}

/// The small load summary every heartbeat carries.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_events_round_trip_as_notes() {
        let ev = Event::MemberChanged {
            node: NodeId(3),
            alive: false,
        };
        let bytes = postcard::to_allocvec(&(EventNote::from(ev.clone()), 7u32)).unwrap();
        let (note, after): (EventNote, u32) = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(note, EventNote::Known(ev));
        assert_eq!(after, 7, "the note's length delimits it");
    }

    #[test]
    fn an_unknown_variant_decodes_as_unknown_and_the_frame_survives() {
        // A newer node's event: variant index 200, fields this build has never seen.
        let newer = vec![200u8, 1, 0x05, b'h', b'e', b'l', b'l', b'o'];
        let wire = postcard::to_allocvec(&(EventNote::Unknown(newer.clone()), 9u32)).unwrap();
        let (note, after): (EventNote, u32) = postcard::from_bytes(&wire).unwrap();
        assert_eq!(note, EventNote::Unknown(newer));
        assert_eq!(after, 9);
        // A known variant followed by bytes it does not have is a newer shape: unknown.
        let mut longer = postcard::to_allocvec(&Event::MemberChanged {
            node: NodeId(1),
            alive: true,
        })
        .unwrap();
        longer.push(42);
        let wire = postcard::to_allocvec(&EventNote::Unknown(longer)).unwrap();
        assert!(matches!(
            postcard::from_bytes::<EventNote>(&wire).unwrap(),
            EventNote::Unknown(_)
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_note_bytes_never_panic(bytes in proptest::collection::vec(0u8..=255, 0..64)) {
            let wire = postcard::to_allocvec(&EventNote::Unknown(bytes)).unwrap();
            let _ = postcard::from_bytes::<EventNote>(&wire).unwrap();
        }
    }
}
