//! The cluster as this node's membership sees it, published through a `watch` channel for
//! the other actors (the Control reads the live agents, the forwarder the Control's
//! address, event fan-out the other members).

use std::net::SocketAddr;

use smart_proto::{Epoch, NodeId};

use crate::control::AgentAddr;

/// The Control as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlAt {
    /// Its node.
    pub node: NodeId,
    /// Its epoch.
    pub epoch: Epoch,
    /// Its transport address.
    pub addr: SocketAddr,
}

/// What membership publishes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterView {
    /// The current Control (`None` during an election).
    pub control: Option<ControlAt>,
    /// Live members with the agent role, this node included, by node id.
    pub agents: Vec<AgentAddr>,
    /// Transport addresses of the other live members (any role).
    pub others: Vec<SocketAddr>,
}
