//! The messages a node's actors send its supervisor and its membership, defined apart from
//! those actors so that any child can name them without importing its siblings.

use std::net::SocketAddr;

use ractor::RpcReplyPort;
use smart_proto::Epoch;

use crate::election::Leadership;
use smart_proto::api::ClusterStatus;
use smart_proto::heartbeat::LoadSummary;

/// The node supervisor's messages.
pub enum NodeMsg {
    /// Membership: this node became Control at `epoch` (or still is, and its actor must
    /// start again).
    StartControl {
        /// The epoch.
        epoch: Epoch,
        /// Whether it may act at once after its rebuild (derived from the election's state,
        /// never remembered by the supervisor: a restarted actor must not wait for a change
        /// that already happened).
        acting: bool,
    },
    /// Membership: the Control re-asserted at a higher epoch.
    ControlEpoch {
        /// The epoch.
        epoch: Epoch,
    },
    /// Membership: whether the Control may act.
    ControlActing {
        /// The epoch.
        epoch: Epoch,
        /// May act.
        acting: bool,
    },
    /// Membership: step down.
    StopControl,
    /// Stop the whole tree.
    Shutdown,
}

/// Membership's messages.
pub enum MembershipMsg {
    /// Time passed.
    Tick,
    /// Raw bytes from a socket.
    Datagram(Vec<u8>, SocketAddr),
    /// The local Control finished rebuilding at `epoch`.
    RebuildDone(Epoch),
    /// The local Control learned from an agent that a newer epoch exists.
    ControlStale(Epoch),
    /// The local Control actor failed and is being restarted: re-assert at a new epoch.
    Reassert,
    /// Members and Control as this node sees them.
    Status(RpcReplyPort<ClusterStatus>),
    /// The node is stopping: step down if Control, naming a successor, send a last
    /// heartbeat, then stay silent. Answered once the datagrams are sent.
    Leave(RpcReplyPort<()>),
    /// This node's load, from Agent86's last sample, for the next heartbeats.
    Load(LoadSummary),
    /// Majority mode: Raft's word on this node changed.
    Leadership(Leadership),
}
