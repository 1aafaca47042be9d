//! What a node's TCP port speaks (inside `smart_transport`'s authenticated
//! envelope): the message API, which any authenticated client may send, and the
//! node-to-node messages, which the port accepts only from other nodes. Every variant is a
//! typed message, except the Raft RPCs of the desired-state log ([`crate::desired::RaftRpc`]):
//! those carry the Raft engine's own messages encoded inside, bounded and checked by
//! their decoder (see that module).

use serde::{Deserialize, Serialize};

use crate::agent::{AgentCommand, AgentReply};
use crate::api::{Event, Request, Response, ServiceSpec};
use crate::ids::{Epoch, NodeId};

/// A request to a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeRequest {
    /// A message-API request (from a client, or forwarded by a node to the Control).
    Api(Request),
    /// Control → Agent86: a command at the Control's epoch. The sender is the connection's
    /// authenticated node identity; nodes only.
    Agent {
        /// The Control's epoch.
        epoch: Epoch,
        /// What to do.
        cmd: AgentCommand,
    },
    /// The Control's registry copy, kept by every agent node so that a new Control can
    /// restore services whose node died together with the old Control. Answered `Done`.
    /// Nodes only.
    Replica(Replica),
    /// An event for the receiving node's subscribers (the Control fans its events out, so a
    /// subscriber on any node hears them). Answered `Done`. Nodes only.
    Event(Event),
    /// A message-API request with the time its sender still waits for the answer (the
    /// rest of the deadline its first caller set): the receiving node answers within it,
    /// or answers `Error(TimedOut)`, instead of working past a caller that is gone.
    /// Answered like [`NodeRequest::Api`]. Clients may send it too.
    ApiWithin {
        /// The request.
        req: Request,
        /// Milliseconds the sender waits, from when it sent the request.
        within_ms: u64,
    },
    /// A message of the desired-state Raft group (docs/DESIGN.md, "Desired state in a Raft
    /// log"), between its voters. Answered `Raft`. Nodes only.
    Raft(crate::desired::RaftRpc),
}

impl NodeRequest {
    /// True for the variants only nodes may send.
    pub fn nodes_only(&self) -> bool {
        !matches!(self, NodeRequest::Api(_) | NodeRequest::ApiWithin { .. })
    }
}

/// The answer to a [`NodeRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeResponse {
    /// Answer to [`NodeRequest::Api`] and [`NodeRequest::ApiWithin`].
    Api(Response),
    /// Answer to [`NodeRequest::Agent`].
    Agent(AgentReply),
    /// Answer to [`NodeRequest::Replica`] and [`NodeRequest::Event`].
    Done,
    /// Answer to [`NodeRequest::Raft`].
    Raft(crate::desired::RaftRpcAnswer),
}

/// The Control's registry, as replicated to every agent node. Stamped with the Control's
/// epoch and a version that grows with each copy that Control sends, so that a node keeps
/// the newest copy and never lets an older one (from a deposed Control, or reordered on the
/// network) replace it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Replica {
    /// Epoch of the Control that sent it.
    pub epoch: Epoch,
    /// Sequence number of the copy within that epoch.
    pub version: u64,
    /// The services.
    pub services: Vec<ReplicaEntry>,
    /// Nodes drained by an operator (kept out of placement across failovers).
    pub drained: Vec<NodeId>,
    /// The class profiles.
    pub profiles: Vec<crate::profile::ClassProfile>,
    /// Of `drained`, the nodes the Control drained because they failed a health check
    /// (undrained by the Control when they recover; an operator's drains are not).
    pub health_drained: Vec<NodeId>,
}

impl Replica {
    /// True when `self` is a newer copy than `other`.
    pub fn newer_than(&self, other: &Replica) -> bool {
        (self.epoch, self.version) > (other.epoch, other.version)
    }
}

/// One service in a [`Replica`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaEntry {
    /// What to run.
    pub spec: ServiceSpec,
    /// Where it ran.
    pub node: NodeId,
    /// Clients admitted.
    pub clients: u64,
}
