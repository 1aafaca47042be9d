//! The cluster's desired state and the Raft messages that replicate it between the control
//! nodes (docs/DESIGN.md, "Desired state in a Raft log").
//!
//! *Desired* state is what an operator or a client asked for and expects to outlive any
//! restart: the services admitted, the class profiles stored, the nodes drained. It changes
//! only through a [`DesiredCmd`], and [`DesiredState::apply`] is a pure, deterministic
//! function of the state and the command, so that every control node that applies the same
//! log holds the same state. *Observed* state (where an instance runs, how many clients it
//! has, which nodes are alive) is not here: the Control rebuilds it from the agents' reports.
//!
//! The Raft protocol's own requests and answers travel as postcard bytes inside
//! [`RaftRpc`] and [`RaftRpcAnswer`]: they are the Raft library's types, which this crate
//! does not depend on; `smart_desired` encodes and decodes them, checking each payload
//! against [`RAFT_PAYLOAD_MAX`] first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::api::ServiceSpec;
use crate::ids::{NodeId, ServiceName};
use crate::profile::ClassProfile;

/// What the desired-state log's Raft says of one node: whether it leads and until when a
/// quorum's acknowledgement lets it act. Majority mode's Control is this leader (the node's
/// election reads it); it never crosses a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Leadership {
    /// This node is the Raft leader.
    pub leader: bool,
    /// While leader: until when the latest acknowledgement by a quorum lets it act (Raft's
    /// quorum lease, shorter than its election timeout: a leader cut off stops acting
    /// before another can be elected). `None`: no quorum has acknowledged it.
    pub lease_until: Option<tokio::time::Instant>,
}

impl Leadership {
    /// Leads with a quorum's acknowledgement valid at `now`.
    pub fn valid(&self, now: tokio::time::Instant) -> bool {
        self.leader && self.lease_until.is_some_and(|u| now < u)
    }
}

/// The largest Raft payload (the bytes inside one [`RaftRpc`] or [`RaftRpcAnswer`]): the
/// node transport refuses frames over 1 MiB, and this leaves room for the envelope.
pub const RAFT_PAYLOAD_MAX: usize = 1024 * 1024 - 16 * 1024;

/// What the cluster is asked to run and how, as replicated in the Raft log.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DesiredState {
    /// Services admitted by an operator or a client, by name.
    pub services: BTreeMap<ServiceName, ServiceSpec>,
    /// Class profiles, by class.
    pub profiles: BTreeMap<String, ClassProfile>,
    /// Nodes drained by an operator: kept out of placement until an operator undrains them.
    pub drained: BTreeSet<NodeId>,
    /// Nodes drained by the Control because they failed a health check: undrained by the
    /// Control when they recover. Kept apart from `drained` so that a recovery never lifts
    /// an operator's drain.
    pub health_drained: BTreeSet<NodeId>,
}

/// A change to the [`DesiredState`]: one Raft log entry.
///
/// Variant indices are declaration order (postcard) and are only ever appended: entries
/// written by an older build must decode in a newer one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DesiredCmd {
    /// Admit a service, or replace the spec of one with the same name.
    PutService(ServiceSpec),
    /// Forget a service.
    RemoveService {
        /// Its name.
        name: ServiceName,
    },
    /// Store a class's profile; refused as stale unless its version is newer than the one
    /// kept (a reordered or replayed store never replaces a newer profile).
    PutProfile(Box<ClassProfile>),
    /// Forget a class's profile.
    RemoveProfile {
        /// The class.
        class: String,
    },
    /// Keep a node out of placement.
    Drain {
        /// The node.
        node: NodeId,
        /// True when the Control drains it for a failed health check, false for an
        /// operator's drain.
        by_health: bool,
    },
    /// Lift a drain of the same kind (an operator's, or a health drain).
    Undrain {
        /// The node.
        node: NodeId,
        /// True to lift the health drain, false to lift the operator's drain.
        by_health: bool,
    },
    /// Changes nothing. A new Control writes one before it reads the state: once it is
    /// applied on its node, so is everything committed before it (a follower's applied
    /// state may otherwise lag a stop the old Control had committed, and resurrect it).
    Barrier,
}

impl DesiredCmd {
    /// A short description for logs (no specs or profiles).
    pub fn summary(&self) -> String {
        match self {
            DesiredCmd::PutService(spec) => format!("put-service {}", spec.name),
            DesiredCmd::RemoveService { name } => format!("remove-service {name}"),
            DesiredCmd::PutProfile(p) => format!("put-profile {} v{}", p.class, p.version),
            DesiredCmd::RemoveProfile { class } => format!("remove-profile {class}"),
            DesiredCmd::Drain { node, by_health } => {
                format!("drain {node}{}", if *by_health { " (health)" } else { "" })
            }
            DesiredCmd::Undrain { node, by_health } => {
                format!(
                    "undrain {node}{}",
                    if *by_health { " (health)" } else { "" }
                )
            }
            DesiredCmd::Barrier => "barrier".to_string(),
        }
    }
}

/// What applying a [`DesiredCmd`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyResult {
    /// The state changed.
    Applied,
    /// The state already was what the command asks for.
    Unchanged,
    /// The command names something the state does not hold (a service, a profile).
    NotFound,
    /// A profile not newer than the one kept; nothing changed.
    StaleProfile {
        /// The version kept.
        have: u64,
    },
}

impl DesiredState {
    /// Applies one command: a pure function of the state and the command.
    pub fn apply(&mut self, cmd: &DesiredCmd) -> ApplyResult {
        match cmd {
            DesiredCmd::PutService(spec) => match self.services.get(&spec.name) {
                Some(kept) if kept == spec => ApplyResult::Unchanged,
                _ => {
                    self.services.insert(spec.name.clone(), spec.clone());
                    ApplyResult::Applied
                }
            },
            DesiredCmd::RemoveService { name } => match self.services.remove(name) {
                Some(_) => ApplyResult::Applied,
                None => ApplyResult::NotFound,
            },
            DesiredCmd::PutProfile(profile) => match self.profiles.get(&profile.class) {
                Some(kept) if kept == &**profile => ApplyResult::Unchanged,
                Some(kept) if kept.version >= profile.version => {
                    ApplyResult::StaleProfile { have: kept.version }
                }
                _ => {
                    self.profiles
                        .insert(profile.class.clone(), (**profile).clone());
                    ApplyResult::Applied
                }
            },
            DesiredCmd::RemoveProfile { class } => match self.profiles.remove(class) {
                Some(_) => ApplyResult::Applied,
                None => ApplyResult::NotFound,
            },
            DesiredCmd::Drain { node, by_health } => {
                if self.drains_mut(*by_health).insert(*node) {
                    ApplyResult::Applied
                } else {
                    ApplyResult::Unchanged
                }
            }
            DesiredCmd::Undrain { node, by_health } => {
                if self.drains_mut(*by_health).remove(node) {
                    ApplyResult::Applied
                } else {
                    ApplyResult::Unchanged
                }
            }
            DesiredCmd::Barrier => ApplyResult::Unchanged,
        }
    }

    fn drains_mut(&mut self, by_health: bool) -> &mut BTreeSet<NodeId> {
        if by_health {
            &mut self.health_drained
        } else {
            &mut self.drained
        }
    }
}

/// A Raft message between two control nodes (`NodeRequest::Raft`). The Raft protocol's
/// requests are postcard bytes of the Raft library's types, at most [`RAFT_PAYLOAD_MAX`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RaftRpc {
    /// Replicate log entries, or a heartbeat.
    AppendEntries(Vec<u8>),
    /// Ask for a vote.
    Vote(Vec<u8>),
    /// One chunk of a snapshot.
    InstallSnapshot(Vec<u8>),
    /// A write forwarded to the node believed to lead: it proposes the command itself and
    /// answers [`RaftRpcAnswer::Write`]; it never forwards further.
    ClientWrite {
        /// The command.
        cmd: DesiredCmd,
        /// Milliseconds the sender still waits, from when it sent the request.
        within_ms: u64,
    },
}

impl RaftRpc {
    /// The message's kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RaftRpc::AppendEntries(_) => "append-entries",
            RaftRpc::Vote(_) => "vote",
            RaftRpc::InstallSnapshot(_) => "install-snapshot",
            RaftRpc::ClientWrite { .. } => "client-write",
        }
    }
}

/// The answer to a [`RaftRpc`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RaftRpcAnswer {
    /// The Raft library's answer to `AppendEntries`, `Vote` or `InstallSnapshot`: postcard
    /// bytes of its result (an answer or the receiver's Raft error).
    Reply(Vec<u8>),
    /// The answer to [`RaftRpc::ClientWrite`].
    Write(Result<Written, WriteRefusal>),
    /// The request could not be decoded (garbage, too large, another version): nothing was
    /// done.
    Malformed(String),
}

/// A committed and applied write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// Index of its entry in the Raft log.
    pub index: u64,
    /// What applying it did.
    pub result: ApplyResult,
}

/// Why a node did not commit a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteRefusal {
    /// The node does not lead; `leader` is the leader it knows, if any.
    NotLeader {
        /// The leader it knows.
        leader: Option<NodeId>,
    },
    /// No majority of the control nodes could be reached within the deadline.
    NoMajority {
        /// Control nodes reachable (this one included).
        reachable: u32,
        /// Control nodes needed (a majority of the voters).
        needed: u32,
    },
    /// Not committed within the deadline, for another reason.
    TimedOut,
    /// The encoded command is larger than a Raft payload may be.
    TooLarge {
        /// Its size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// The node's Raft stopped (shut down, or its storage failed).
    Stopped(String),
}

impl fmt::Display for WriteRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteRefusal::NotLeader { leader: Some(l) } => write!(f, "not the leader ({l} is)"),
            WriteRefusal::NotLeader { leader: None } => write!(f, "not the leader (none known)"),
            WriteRefusal::NoMajority { reachable, needed } => write!(
                f,
                "no majority of control nodes reachable ({reachable} reachable, {needed} needed)"
            ),
            WriteRefusal::TimedOut => write!(f, "not committed within the deadline"),
            WriteRefusal::TooLarge { bytes, max } => {
                write!(f, "command of {bytes} bytes, over the {max} byte limit")
            }
            WriteRefusal::Stopped(why) => write!(f, "raft stopped: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{ProfileSource, Series, ServiceProfile};

    fn spec(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            class: "distributor".into(),
            command: vec!["vod".into(), "--listen".into(), "{listen}".into()],
            env: vec![("RUST_LOG".into(), "info".into())],
            per_client_bps: Some(1_000_000),
            duration_ms: None,
        }
    }

    fn profile(class: &str, version: u64) -> ClassProfile {
        ClassProfile {
            class: class.into(),
            source: ProfileSource::Measured,
            version,
            profile: ServiceProfile {
                version: crate::profile::PROFILE_FORMAT_VERSION,
                service: class.into(),
                interval_ms: 1000,
                base: Series {
                    cpu_cores: vec![0.5, 0.25],
                    net_bps: vec![1e6, 2e6],
                    mem_bytes: vec![1 << 20, 2 << 20],
                },
                per_client: None,
                working_set_bytes: 4 << 20,
                video: None,
            },
        }
    }

    #[test]
    fn services_are_put_replaced_and_removed() {
        let mut s = DesiredState::default();
        assert_eq!(
            s.apply(&DesiredCmd::PutService(spec("a"))),
            ApplyResult::Applied
        );
        assert_eq!(
            s.apply(&DesiredCmd::PutService(spec("a"))),
            ApplyResult::Unchanged
        );
        let mut other = spec("a");
        other.per_client_bps = Some(2_000_000);
        assert_eq!(
            s.apply(&DesiredCmd::PutService(other.clone())),
            ApplyResult::Applied
        );
        assert_eq!(s.services.get("a"), Some(&other));
        let rm = DesiredCmd::RemoveService { name: "a".into() };
        assert_eq!(s.apply(&rm), ApplyResult::Applied);
        assert_eq!(s.apply(&rm), ApplyResult::NotFound);
        assert_eq!(s, DesiredState::default());
    }

    #[test]
    fn a_profile_is_replaced_only_by_a_newer_version() {
        let mut s = DesiredState::default();
        assert_eq!(
            s.apply(&DesiredCmd::PutProfile(Box::new(profile("d", 2)))),
            ApplyResult::Applied
        );
        assert_eq!(
            s.apply(&DesiredCmd::PutProfile(Box::new(profile("d", 2)))),
            ApplyResult::Unchanged
        );
        let mut same_version = profile("d", 2);
        same_version.profile.working_set_bytes = 1;
        assert_eq!(
            s.apply(&DesiredCmd::PutProfile(Box::new(same_version))),
            ApplyResult::StaleProfile { have: 2 }
        );
        assert_eq!(
            s.apply(&DesiredCmd::PutProfile(Box::new(profile("d", 1)))),
            ApplyResult::StaleProfile { have: 2 }
        );
        assert_eq!(s.profiles["d"], profile("d", 2));
        assert_eq!(
            s.apply(&DesiredCmd::PutProfile(Box::new(profile("d", 3)))),
            ApplyResult::Applied
        );
        assert_eq!(s.profiles["d"].version, 3);
        let rm = DesiredCmd::RemoveProfile { class: "d".into() };
        assert_eq!(s.apply(&rm), ApplyResult::Applied);
        assert_eq!(s.apply(&rm), ApplyResult::NotFound);
        assert!(s.profiles.is_empty());
    }

    #[test]
    fn operator_and_health_drains_are_kept_apart() {
        let mut s = DesiredState::default();
        let n = NodeId(4);
        let drain = |by_health| DesiredCmd::Drain { node: n, by_health };
        let undrain = |by_health| DesiredCmd::Undrain { node: n, by_health };
        assert_eq!(s.apply(&drain(false)), ApplyResult::Applied);
        assert_eq!(s.apply(&drain(false)), ApplyResult::Unchanged);
        assert_eq!(s.apply(&drain(true)), ApplyResult::Applied);
        // The node recovers: the health drain goes, the operator's stays.
        assert_eq!(s.apply(&undrain(true)), ApplyResult::Applied);
        assert_eq!(s.drained, BTreeSet::from([n]));
        assert!(s.health_drained.is_empty());
        assert_eq!(s.apply(&undrain(true)), ApplyResult::Unchanged);
        assert_eq!(s.apply(&undrain(false)), ApplyResult::Applied);
        let before = s.clone();
        assert_eq!(s.apply(&DesiredCmd::Barrier), ApplyResult::Unchanged);
        assert_eq!(s, before, "a barrier changes nothing");
        assert!(s.drained.is_empty() && s.health_drained.is_empty());
    }

    #[test]
    fn applying_the_same_log_gives_the_same_state() {
        let log = [
            DesiredCmd::PutService(spec("a")),
            DesiredCmd::PutProfile(Box::new(profile("d", 1))),
            DesiredCmd::Drain {
                node: NodeId(1),
                by_health: true,
            },
            DesiredCmd::PutService(spec("b")),
            DesiredCmd::RemoveService { name: "a".into() },
            DesiredCmd::PutProfile(Box::new(profile("d", 5))),
        ];
        let run = || {
            let mut s = DesiredState::default();
            let results: Vec<_> = log.iter().map(|c| s.apply(c)).collect();
            (s, results)
        };
        let (a, ra) = run();
        let (b, rb) = run();
        assert_eq!(a, b);
        assert_eq!(ra, rb);
        assert_eq!(a.services.keys().collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(a.profiles["d"].version, 5);
        assert!(a.drained.contains(&NodeId(1)) || a.health_drained.contains(&NodeId(1)));
    }

    fn round_trip<T>(v: &T)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug,
    {
        let bytes = postcard::to_allocvec(v).expect("encode");
        let back: T = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(&back, v);
    }

    #[test]
    fn state_commands_and_rpcs_round_trip() {
        let mut s = DesiredState::default();
        s.apply(&DesiredCmd::PutService(spec("a")));
        s.apply(&DesiredCmd::PutProfile(Box::new(profile("d", 1))));
        s.apply(&DesiredCmd::Drain {
            node: NodeId(2),
            by_health: false,
        });
        s.apply(&DesiredCmd::Drain {
            node: NodeId(3),
            by_health: true,
        });
        round_trip(&s);
        for cmd in [
            DesiredCmd::PutService(spec("a")),
            DesiredCmd::RemoveService { name: "a".into() },
            DesiredCmd::PutProfile(Box::new(profile("d", 1))),
            DesiredCmd::RemoveProfile { class: "d".into() },
            DesiredCmd::Drain {
                node: NodeId(2),
                by_health: true,
            },
            DesiredCmd::Undrain {
                node: NodeId(2),
                by_health: false,
            },
        ] {
            round_trip(&cmd);
            round_trip(&RaftRpc::ClientWrite {
                cmd,
                within_ms: 1500,
            });
        }
        round_trip(&RaftRpc::AppendEntries(vec![1, 2, 3]));
        round_trip(&RaftRpc::Vote(vec![]));
        round_trip(&RaftRpc::InstallSnapshot(vec![0; 1000]));
        round_trip(&RaftRpcAnswer::Reply(vec![9; 10]));
        round_trip(&RaftRpcAnswer::Malformed("bad".into()));
        round_trip(&RaftRpcAnswer::Write(Ok(Written {
            index: 7,
            result: ApplyResult::StaleProfile { have: 3 },
        })));
        for refusal in [
            WriteRefusal::NotLeader {
                leader: Some(NodeId(1)),
            },
            WriteRefusal::NotLeader { leader: None },
            WriteRefusal::NoMajority {
                reachable: 1,
                needed: 2,
            },
            WriteRefusal::TimedOut,
            WriteRefusal::TooLarge { bytes: 5, max: 4 },
            WriteRefusal::Stopped("storage".into()),
        ] {
            round_trip(&RaftRpcAnswer::Write(Err(refusal)));
        }
    }

    #[test]
    fn a_truncated_or_garbage_rpc_is_an_error() {
        let bytes = postcard::to_allocvec(&RaftRpc::ClientWrite {
            cmd: DesiredCmd::PutService(spec("a")),
            within_ms: 10,
        })
        .expect("encode");
        for cut in 0..bytes.len() {
            assert!(
                postcard::from_bytes::<RaftRpc>(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        // A length prefix claiming far more bytes than there are fails without allocating.
        assert!(postcard::from_bytes::<RaftRpc>(&[0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(postcard::from_bytes::<RaftRpc>(&[200]).is_err());
    }

    #[test]
    fn the_no_majority_refusal_says_why() {
        let msg = WriteRefusal::NoMajority {
            reachable: 1,
            needed: 2,
        }
        .to_string();
        assert!(
            msg.contains("no majority of control nodes reachable"),
            "{msg}"
        );
        assert!(msg.contains("1 reachable, 2 needed"), "{msg}");
    }
}
